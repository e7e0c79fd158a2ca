"""Stopping background tasks for good, and settling futures that others wait for."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


async def cancel(task: asyncio.Task[object]) -> None:
    """Cancel ``task`` and wait until it has ended. Python 3.11's ``asyncio.wait_for`` can
    swallow a cancellation that lands as the future it waits for completes, so one cancel is
    not always enough: ask again until the task is done."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)


def settle(future: asyncio.Future[T], value: T, error: BaseException | None = None) -> None:
    """Give ``future`` its outcome (``error`` when not None), unless it has one already (its
    waiter may have gone away)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
