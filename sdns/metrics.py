"""What ``GET /metrics`` tells, in Prometheus's text format, with CoreDNS's names and labels
under the ``sdns_`` prefix, so that CoreDNS dashboards and alerts carry over with a rename.

The parts that serve keep plain counts (``sdns.dns.tally``, the forwarder, the caches, the
balancer); a collector folds them into metric families when scraped. DNS workers (``--workers``)
write their counts to a directory the primary reads at each scrape (``WorkerReports``), so one
scrape sums every process. Writes and the DNS programming latency are on the loop, where a
prometheus-client Counter or Histogram costs nothing that matters.
"""

from __future__ import annotations

import bisect
import contextlib
import importlib.metadata
import json
import os
import platform
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sdns.dns import tally, wire

if TYPE_CHECKING:
    from sdns.balancer.balancer import Balancer
    from sdns.dns.responder import Responder
    from sdns.watch import Watcher

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
VERSION = importlib.metadata.version("sdns")
REPORT_SECONDS = 1.0  # how often a worker writes its counts: how stale a scrape may see them

# Kept on the loop, so prometheus-client's own kinds: one registry per process.
REGISTRY = CollectorRegistry(auto_describe=True)
WRITES = Counter("sdns_registry_writes", "Writes that changed the store, by kind of object and "
                 "action", ["kind", "action"], registry=REGISTRY)
PROGRAMMING = Histogram(
    "sdns_dns_programming_duration_seconds", "From a write sent to the store to this replica "
    "answering it over DNS", buckets=[0.001 * 2**k for k in range(16)], registry=REGISTRY)


def dns_counts(responder: Responder) -> dict[str, Any]:
    """The DNS counts of this process as plain JSON-able data, which add up across processes
    (``merge``)."""
    counts: dict[str, Any] = {"cells": {}, "durations": {}, "duration_sum": {}}
    for protocol, counted in responder.tallies.by_protocol():
        counts = merge(counts, {
            # copy() is one C call, which the UDP thread cannot cut into
            "cells": {protocol: {str(k): n for k, n in counted.cells.copy().items()}},
            "durations": {protocol: list(counted.durations)},
            "duration_sum": {protocol: counted.duration_sum}})
    cache, packets = responder.cache, responder.packets
    denial = cache.denials + packets.denials
    success = len(cache) + len(packets) - denial
    evictions = cache.evictions + packets.evictions
    forward: dict[str, Any] = {"requests": {}, "responses": {}, "stale": 0}
    forwarder = responder.forwarder
    if forwarder is not None:
        forwarded = forwarder.entries()
        success, denial = success + forwarded[0], denial + forwarded[1]
        evictions += forwarder.evictions
        forward = {"requests": dict(forwarder.requests),
                   "responses": {f"{to}|{rcode}": n for (to, rcode), n
                                 in forwarder.responses.items()},
                   "stale": forwarder.served_stale}
    counts["cache"] = {"success": success, "denial": denial, "evictions": evictions}
    counts["forward"] = forward
    return counts


def merge(a: Any, b: Any) -> Any:
    """``a`` and ``b`` added up: numbers, lists of numbers and dicts of those, key by key."""
    if isinstance(a, dict):
        return {k: merge(a[k], b[k]) if k in a and k in b else a.get(k, b.get(k))
                for k in a.keys() | b.keys()}
    if isinstance(a, list):
        return [x + y for x, y in zip(a, b, strict=True)]
    return a + b


def dns_families(counts: Mapping[str, Any], family: str) -> Iterator[Metric]:
    """The DNS, cache and forwarding families of ``counts`` (from ``dns_counts``)."""
    requests = CounterMetricFamily("sdns_dns_requests", "DNS requests", labels=["proto", "family",
                                                                                "type"])
    responses = CounterMetricFamily("sdns_dns_responses", "DNS responses by rcode",
                                    labels=["rcode"])
    hits = CounterMetricFamily("sdns_cache_hits", "Answers served from a cache", labels=["type"])
    cache_requests = CounterMetricFamily("sdns_cache_requests", "Questions a cache was asked")
    by_type: dict[tuple[str, str], int] = {}
    by_rcode: dict[str, int] = {}
    by_hit = {"success": 0, "denial": 0}
    asked = 0
    sizes: dict[str, list[int]] = {}
    size_sums: dict[str, int] = {}
    for protocol, cells in counts["cells"].items():
        buckets = sizes.setdefault(protocol, [0] * (len(tally.SIZE_BUCKETS) + 1))
        for key, count in cells.items():
            reply = tally.unpack(int(key))
            by_type[protocol, reply.type] = by_type.get((protocol, reply.type), 0) + count
            rcode = wire.rcode_name(reply.rcode)
            by_rcode[rcode] = by_rcode.get(rcode, 0) + count
            if reply.outcome != tally.UNCACHED:
                asked += count
            if reply.outcome == tally.SUCCESS:
                by_hit["success"] += count
            elif reply.outcome == tally.DENIAL:
                by_hit["denial"] += count
            buckets[bisect.bisect_left(tally.SIZE_BUCKETS, reply.size)] += count
            size_sums[protocol] = size_sums.get(protocol, 0) + reply.size * count
    for (protocol, qtype), count in sorted(by_type.items()):
        requests.add_metric([protocol, family, qtype], count)
    for rcode, count in sorted(by_rcode.items()):
        responses.add_metric([rcode], count)
    for kind, count in by_hit.items():
        hits.add_metric([kind], count)
    cache_requests.add_metric([], asked)
    yield from (requests, responses, hits, cache_requests)

    durations = HistogramMetricFamily("sdns_dns_request_duration_seconds",
                                      "From a request received to its reply")
    total = [0] * (len(tally.DURATION_BUCKETS) + 1)
    for counted in counts["durations"].values():
        total = [x + y for x, y in zip(total, counted, strict=True)]
    durations.add_metric([], _cumulative(tally.DURATION_BUCKETS, total),
                         sum(counts["duration_sum"].values()))
    yield durations
    size = HistogramMetricFamily("sdns_dns_response_size_bytes", "Size of the replies",
                                 labels=["proto"])
    for protocol, buckets in sorted(sizes.items()):
        size.add_metric([protocol], _cumulative(tally.SIZE_BUCKETS, buckets),
                        size_sums.get(protocol, 0))
    yield size

    cache = counts["cache"]
    entries = GaugeMetricFamily("sdns_cache_entries", "Answers and replies in the caches",
                                labels=["type"])
    entries.add_metric(["success"], cache["success"])
    entries.add_metric(["denial"], cache["denial"])
    yield entries
    yield CounterMetricFamily("sdns_cache_evictions", "Answers and replies dropped to make room",
                              value=cache["evictions"])

    forward = counts["forward"]
    sent = CounterMetricFamily("sdns_forward_requests", "Queries sent upstream", labels=["to"])
    for to, count in sorted(forward["requests"].items()):
        sent.add_metric([to], count)
    answered = CounterMetricFamily("sdns_forward_responses", "Upstream replies by rcode",
                                   labels=["to", "rcode"])
    for key, count in sorted(forward["responses"].items()):
        to, _, rcode = key.rpartition("|")
        answered.add_metric([to, wire.rcode_name(int(rcode))], count)
    yield from (sent, answered)
    yield CounterMetricFamily("sdns_forward_served_stale", "Forwarded answers served stale "
                              "while every upstream failed (RFC 8767)", value=forward["stale"])


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    running, buckets = 0, []
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return buckets


class WorkerReports:
    """A directory where each DNS worker writes its counts, one file per process."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls) -> WorkerReports:
        return cls(Path(tempfile.mkdtemp(prefix="sdns-metrics-")))

    def write(self, counts: dict[str, Any]) -> None:
        """Replace this process's report, atomically: a scrape reads the old or the new."""
        target = self.path / f"{os.getpid()}.json"
        partial = target.with_suffix(".part")
        partial.write_text(json.dumps(counts))
        partial.replace(target)

    def read(self) -> Iterator[dict[str, Any]]:
        for path in self.path.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                yield json.loads(path.read_text())

    def remove(self) -> None:
        for path in self.path.iterdir():
            path.unlink(missing_ok=True)
        self.path.rmdir()


class ServerCollector(Collector):
    """The families read from the running parts at each scrape: DNS (this process and its
    workers), the store and the view, the balancer."""

    def __init__(self, responder: Responder, dns_family: str, watcher: Watcher,
                 balancer: Balancer | None, reports: WorkerReports | None) -> None:
        self.responder, self.dns_family = responder, dns_family
        self.watcher, self.balancer, self.reports = watcher, balancer, reports

    def collect(self) -> Iterator[Metric]:
        counts = dns_counts(self.responder)
        if self.reports is not None:
            for report in self.reports.read():
                counts = merge(counts, report)
        yield from dns_families(counts, self.dns_family)
        yield from self._store()
        if self.balancer is not None:
            yield from self._balancer(self.balancer)
        info = GaugeMetricFamily("sdns_build_info", "The sdns build that serves",
                                 labels=["version", "python"])
        info.add_metric([VERSION, platform.python_version()], 1)
        yield info

    def _store(self) -> Iterator[Metric]:
        watcher = self.watcher
        services, ready, not_ready = watcher.view.counts()
        yield GaugeMetricFamily("sdns_services", "Services in this replica's view",
                                value=services)
        endpoints = GaugeMetricFamily("sdns_endpoints", "Endpoints in this replica's view",
                                      labels=["ready"])
        endpoints.add_metric(["true"], ready)
        endpoints.add_metric(["false"], not_ready)
        yield endpoints
        yield GaugeMetricFamily("sdns_store_up", "1 while the backend answers, 0 while DNS "
                                "serves the last known data", value=int(watcher.healthy))
        yield GaugeMetricFamily("sdns_watch_revision", "The store revision this replica's view "
                                "is at", value=watcher.view.revision)
        yield CounterMetricFamily("sdns_registry_expired", "Endpoints whose TTL or lease ran "
                                  "out, as this process saw them",
                                  value=watcher.backend.expired)
        preserved = 0 if watcher.preservation is None else len(watcher.preservation.preserved)
        yield GaugeMetricFamily("sdns_self_preservation", "1 while expired endpoints are kept "
                                "(renewals stopped all at once: a partition)",
                                value=int(preserved > 0))
        yield GaugeMetricFamily("sdns_preserved_endpoints", "Expired endpoints kept by "
                                "self-preservation", value=preserved)

    def _balancer(self, balancer: Balancer) -> Iterator[Metric]:
        connections = CounterMetricFamily("sdns_balancer_connections", "Connections (UDP flows) "
                                          "the userspace balancer sent to an endpoint",
                                          labels=["service", "port"])
        up = GaugeMetricFamily("sdns_balancer_endpoint_up", "Endpoints behind a VIP:port the "
                               "balancer sends new connections to", labels=["service", "port"])
        accepted: dict[tuple[str, str], int] = {}
        live: dict[tuple[str, str], int] = {}
        for listener in balancer.proxy.listeners.values():
            frontend = listener.frontend
            labels = (f"{frontend.key.namespace}/{frontend.key.name}", frontend.port_name)
            accepted[labels] = accepted.get(labels, 0) + listener.accepted
            live[labels] = live.get(labels, 0) + sum(s.up for s in listener.states.values())
        for labels, count in sorted(accepted.items()):
            connections.add_metric(list(labels), count)
            up.add_metric(list(labels), live[labels])
        yield from (connections, up)


def render() -> bytes:
    return bytes(generate_latest(REGISTRY))
