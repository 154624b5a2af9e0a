"""``sendmmsg(2)``/``recvmmsg(2)`` declarations for ctypes (Python's socket module lacks both).

Standard library only, so the sidecar can use them; the node agent imports these same
declarations (``nodeagent.adapters.mmsg``) instead of keeping its own. Layouts follow
``<sys/socket.h>`` and ``<bits/uio.h>`` on Linux (64-bit: iovec 16 bytes, mmsghdr 64).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any


class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


def libc_function(name: str, argtypes: list[Any]) -> Any:
    """The C library's ``name`` with ``argtypes`` and an ``int`` result (errno kept), or None when the
    C library lacks it (the callers then fall back to one datagram per system call)."""
    try:
        func = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), name)
    except (OSError, AttributeError):
        return None
    func.argtypes = argtypes
    func.restype = ctypes.c_int
    return func


def sendmmsg() -> Any:
    """``int sendmmsg(int fd, struct mmsghdr *msgs, unsigned n, int flags)``, or None."""
    return libc_function("sendmmsg", [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int])
