"""Many UDP datagrams per system call: recvmmsg(2) and sendmmsg(2), which Python's socket
module does not offer, called through ctypes.

On loopback most of the cost of a cached DNS answer is the kernel's: a responder doing one
recvfrom and one sendto per query spent 70% of its time in system calls. Taking up to
``BATCH`` queries in one call and answering them in one call took sdns's hot mix from 67k to
107k QPS on one core (medians of 5 alternating dnsperf rounds).
``AVAILABLE`` only on Linux, whose ``struct mmsghdr`` layout, ``MSG_WAITFORONE`` value and
``sockaddr`` layouts this module hard-codes (other systems that have the calls lay them out
otherwise), and only where its C library has both calls; elsewhere the server reads one datagram
at a time.

Replies are sent from where the bytes objects hold them: CPython's ``id`` is an object's address,
and a bytes object's data follow its header. Copying each reply into a buffer of our own instead
took a third of the Python time spent on a cached answer (py-spy, 2026-11-22). The import checks
that layout, and the batches are not ``AVAILABLE`` where it does not hold.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import socket
import struct
import sys

BATCH = 64
# A UDP payload is at most 65,507 bytes: a slot that size never truncates a query. The pages
# are only touched as far as datagrams reach, so the 4 MiB this reserves mostly stay virtual.
RECEIVE_SLOT = 65_536
_NAME_SLOT = 128  # sizeof(struct sockaddr_storage)
_NAME_LENGTHS = {socket.AF_INET: 16, socket.AF_INET6: 28}  # sizeof(struct sockaddr_in, _in6)
_MSG_WAITFORONE = 0x10000
_BYTES_DATA = bytes.__basicsize__ - 1  # where a bytes object's data start (after the header)


def _bytes_at(data: bytes) -> int:
    """The address of the data of ``data``, alive as long as ``data`` is."""
    return id(data) + _BYTES_DATA


def _bytes_layout_holds() -> bool:
    probe = b"sdns: where a bytes object keeps its data"
    return (sys.implementation.name == "cpython"
            and ctypes.string_at(_bytes_at(probe), len(probe)) == probe)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
AVAILABLE = (sys.platform == "linux" and hasattr(_libc, "recvmmsg")
             and hasattr(_libc, "sendmmsg") and _bytes_layout_holds())
if AVAILABLE:
    _libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                               ctypes.c_void_p]
    _libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]

_STRIDE = ctypes.sizeof(_Mmsghdr)
_LEN = _Mmsghdr.len.offset
_IOV_STRIDE = ctypes.sizeof(_Iovec)
_U32 = struct.Struct("I")
_IOVEC = struct.Struct("PN")


class Datagrams:
    """One socket's batch: ``receive`` the datagrams waiting (at least one), then ``send`` one
    reply, or None, to each in order. One thread owns it."""

    def __init__(self, sock: socket.socket, batch: int = BATCH) -> None:
        if not AVAILABLE:
            raise OSError("recvmmsg and sendmmsg are not available here")
        self.sock = sock
        self.batch = batch
        self._fd = sock.fileno()
        self._family = sock.family
        self._received = mmap.mmap(-1, batch * RECEIVE_SLOT)
        self._names = bytearray(batch * _NAME_SLOT)
        self._in = bytearray(batch * _STRIDE)  # struct mmsghdr[batch] for recvmmsg
        self._out = bytearray(batch * _STRIDE)  # and for sendmmsg: reply i to sender i
        in_iovs, self._out_iovs = bytearray(batch * _IOV_STRIDE), bytearray(batch * _IOV_STRIDE)
        # the kernel gets raw addresses: these views keep each buffer where it is
        self._pinned = [(ctypes.c_char * len(b)).from_buffer(b) for b in (
            self._received, self._names, self._in, self._out, in_iovs, self._out_iovs)]
        received, names, self._in_at, self._out_at, in_iovs_at, out_iovs_at = (
            ctypes.addressof(p) for p in self._pinned)
        for i in range(batch):
            _IOVEC.pack_into(in_iovs, i * _IOV_STRIDE, received + i * RECEIVE_SLOT,
                             RECEIVE_SLOT)
            header = _Mmsghdr()
            header.hdr.name, header.hdr.namelen = names + i * _NAME_SLOT, _NAME_SLOT
            header.hdr.iov, header.hdr.iovlen = in_iovs_at + i * _IOV_STRIDE, 1
            self._in[i * _STRIDE:(i + 1) * _STRIDE] = bytes(header)
            # a reply goes to an address of the socket's own family: its length is known
            header.hdr.namelen = _NAME_LENGTHS.get(self._family, _NAME_SLOT)
            header.hdr.iov = out_iovs_at + i * _IOV_STRIDE
            self._out[i * _STRIDE:(i + 1) * _STRIDE] = bytes(header)
        # the kernel overwrites each name length with the sender's: restored before each call
        self._fresh = bytes(self._in)
        self._lengths = [struct.Struct(f"{_LEN}xI{_STRIDE - _LEN - 4}x" * n)
                         for n in range(batch + 1)]
        self._slots = range(0, batch * RECEIVE_SLOT, RECEIVE_SLOT)
        self._count = 0

    def receive(self) -> list[bytes]:
        """Block until a datagram arrives; every datagram then waiting, up to the batch."""
        self._in[:] = self._fresh
        self._count = 0
        count = _libc.recvmmsg(self._fd, self._in_at, self.batch, _MSG_WAITFORONE, None)
        if count < 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
        self._count = count
        received = self._received
        return [received[at:at + length] for at, length in
                zip(self._slots, self._lengths[count].unpack_from(self._in), strict=False)]

    def sender(self, index: int) -> tuple[str, int] | tuple[str, int, int, int]:
        """The address datagram ``index`` of the last ``receive`` came from, as ``sendto``
        takes it."""
        raw = bytes(self._names[index * _NAME_SLOT:(index + 1) * _NAME_SLOT])
        port = int.from_bytes(raw[2:4], "big")
        if self._family == socket.AF_INET6:
            return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port,
                    int.from_bytes(raw[4:8], "big"), _U32.unpack_from(raw, 24)[0])
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port

    def send(self, replies: list[bytes | None]) -> None:
        """Send each reply to the sender of the datagram at the same place in the last
        ``receive``; None sends nothing. ``replies`` holds the replies until the kernel has
        them, since the kernel reads each from its bytes object."""
        iovs, pack = self._out_iovs, _IOVEC.pack_into
        at, gaps = 0, False
        for reply in replies[:self._count]:
            if reply is None:
                gaps = True
            else:
                pack(iovs, at, id(reply) + _BYTES_DATA, len(reply))  # _bytes_at, inlined
            at += _IOV_STRIDE
        if not gaps:
            self._send(0, self._count)
            return
        first = None
        for i, reply in enumerate([*replies[:self._count], None]):
            if reply is not None and first is None:
                first = i
            elif reply is None and first is not None:
                self._send(first, i)
                first = None

    def _send(self, first: int, end: int) -> None:
        """Send the replies to datagrams ``first`` to ``end`` (excluded)."""
        while first < end:
            done = _libc.sendmmsg(self._fd, self._out_at + first * _STRIDE, end - first, 0)
            # a reply the kernel refuses is dropped, as a failed sendto would be
            first += done if done > 0 else 1
