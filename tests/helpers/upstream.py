"""An upstream DNS server of the tests' own on loopback, for the failure modes a real one does
not show on demand: silence, truncation, wrong IDs, slowness. It counts what it is asked."""

from __future__ import annotations

import socket
import struct
import threading
import time

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from tests.helpers.support import free_port


def _broken(shape: str, good: bytes, negative: bytes) -> bytes:
    """``good`` (one question, two A records) or ``negative`` (an SOA in authority) broken."""
    question_end = 12 + good[12:].index(b"\0") + 5
    if shape == "count":  # a third answer is promised
        return good[:7] + b"\x03" + good[8:]
    if shape == "rdlength":  # the last record's data runs past the end
        return good[:-6] + struct.pack(">H", 40) + good[-4:]
    if shape == "pointer-loop":  # the first answer's owner points at itself
        return good[:question_end] + struct.pack(">H", 0xC000 | question_end) + \
            good[question_end + 2:]
    if shape == "soa-short":  # the SOA's data stops before its numbers, its length agreeing
        soa = negative.rindex(b"\x00\x06\x00\x01")  # type SOA, class IN
        length = struct.unpack_from(">H", negative, soa + 8)[0]
        return negative[:soa + 8] + struct.pack(">H", length - 12) + negative[soa + 10:-12]
    if shape == "trailing":  # bytes after the last record
        return good + b"\x00\x00\x01"
    raise ValueError(shape)


BROKEN = ("count", "rdlength", "pointer-loop", "soa-short", "trailing")


class FakeUpstream:
    """``mode``: answer, silent, truncate (UDP says TC, TCP answers), wrong-id (a reply with
    another ID comes first), nxdomain (with an SOA whose minimum is 60), slow (answers after
    ``delay``), or one of ``BROKEN``: a reply that matches the question but whose records are
    broken, sent after ``delay``."""

    def __init__(self, mode: str = "answer", ttl: int = 300, delay: float = 0.3) -> None:
        self.mode, self.ttl, self.delay = mode, ttl, delay
        self.port = free_port()
        self.queries = 0
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", self.port))
        self._tcp = socket.socket()
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind(("127.0.0.1", self.port))
        self._tcp.listen()
        self._closed = False
        for target in (self._serve_udp, self._serve_tcp):
            threading.Thread(target=target, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _answer(self, query: dns.message.Message, tcp: bool) -> dns.message.Message:
        response = dns.message.make_response(query)
        name = query.question[0].name
        if self.mode == "nxdomain":
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text(
                "example.", 3600, "IN", "SOA", "ns.example. host.example. 1 7200 900 86400 60"))
            return response
        if self.mode == "truncate" and not tcp:
            response.flags |= dns.flags.TC
            return response
        response.answer.append(dns.rrset.from_text(name, self.ttl, "IN", "A", "192.0.2.1",
                                                   "192.0.2.2"))
        return response

    def _serve_udp(self) -> None:
        while not self._closed:
            try:
                data, addr = self._udp.recvfrom(4096)
            except OSError:
                return
            self.queries += 1
            if self.mode == "silent":
                continue
            query = dns.message.from_wire(data)
            if self.mode == "slow" or self.mode in BROKEN:
                time.sleep(self.delay)
            if self.mode in BROKEN:
                negative = dns.message.make_response(query)
                negative.set_rcode(dns.rcode.NXDOMAIN)
                negative.authority.append(dns.rrset.from_text(
                    "example.", 3600, "IN", "SOA",
                    "ns.example. host.example. 1 7200 900 86400 60"))
                good = self._answer(query, False)
                for reply in (good, negative):  # no OPT: the shapes break the last records
                    reply.use_edns(False)
                self._udp.sendto(_broken(self.mode, good.to_wire(), negative.to_wire()), addr)
                continue
            if self.mode == "wrong-id":
                wrong = self._answer(query, False)
                wrong.id = (query.id + 1) % 65536
                wrong.answer[0] = dns.rrset.from_text(query.question[0].name, 300, "IN", "A",
                                                      "203.0.113.66")
                self._udp.sendto(wrong.to_wire(), addr)
            self._udp.sendto(self._answer(query, False).to_wire(), addr)

    def _serve_tcp(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._tcp.accept()
            except OSError:
                return
            with conn:
                length = struct.unpack(">H", conn.recv(2))[0]
                data = b""
                while len(data) < length:
                    data += conn.recv(length - len(data))
                self.queries += 1
                reply = self._answer(dns.message.from_wire(data), True).to_wire()
                conn.sendall(struct.pack(">H", len(reply)) + reply)

    def close(self) -> None:
        self._closed = True
        self._udp.close()
        self._tcp.close()
