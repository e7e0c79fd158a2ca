"""Per-query log lines, for debugging (``--log-queries``): one line a reply, with the client,
the question, the rcode, the size and how long it took, at most ``MAX_PER_SECOND`` lines a
second; past that, one line tells how many were left out. Off by default, and then nothing on
the path of a query looks at it."""

from __future__ import annotations

import logging
import threading
import time

from sdns.dns import wire

MAX_PER_SECOND = 200
log = logging.getLogger("sdns.query")


def _question(data: bytes) -> tuple[str, str]:
    try:
        query = wire.parse(data)
    except (wire.Drop, wire.FormatError):
        return "-", "-"
    name = ".".join(label.decode("ascii", "replace") for label in wire.labels(query.qname))
    try:
        kind = wire.RecordType(query.qtype).name
    except ValueError:
        kind = str(query.qtype)
    return name + ".", kind


class QueryLog:
    """Written by the UDP thread and the loop alike; the lock keeps the count per second."""

    def __init__(self, max_per_second: int = MAX_PER_SECOND) -> None:
        self.max_per_second = max_per_second
        self._lock = threading.Lock()
        self._second = 0
        self._logged = self._skipped = 0

    def record(self, proto: str, client: object, data: bytes, reply: bytes,
               seconds: float) -> None:
        second = int(time.monotonic())
        with self._lock:
            if second != self._second:
                skipped, self._skipped = self._skipped, 0
                self._second, self._logged = second, 0
                if skipped:
                    log.info("%d queries not logged in the last second (at most %d a second)",
                             skipped, self.max_per_second, extra={"skipped": skipped})
            if self._logged >= self.max_per_second:
                self._skipped += 1
                return
            self._logged += 1
        name, kind = _question(data)
        address = client[0] if isinstance(client, tuple) else str(client)
        rcode = wire.rcode_name(reply[3] & 0x0F) if len(reply) > 3 else "-"
        log.info("%s %s %s %s %s %dB %.3fms", address, proto, name, kind, rcode, len(reply),
                 seconds * 1000, extra={"client": address, "proto": proto, "qname": name,
                                        "qtype": kind, "rcode": rcode, "size": len(reply),
                                        "duration": round(seconds, 6)})
