"""Stopping background tasks for good."""

from __future__ import annotations

import asyncio


async def cancel(task: asyncio.Task[object]) -> None:
    """Cancel ``task`` and wait until it has ended. Python 3.11's ``asyncio.wait_for`` can
    swallow a cancellation that lands as the future it waits for completes, so one cancel is
    not always enough: ask again until the task is done."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
