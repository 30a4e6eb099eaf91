"""Blocking waits on words in shared memory, through the Linux futex system call.

Ranks often outnumber cores (4 ranks on 2 cores in CI): a rank that spins while waiting
for a peer steals the core that peer needs. A futex puts the waiter to sleep in the
kernel until the word changes, and costs about a microsecond when nobody waits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "ppc64le": 221}
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_INT_MAX = 0x7FFFFFFF


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_nr = _SYS_FUTEX.get(platform.machine())


def available() -> bool:
    return _nr is not None


def wait(address: int, expected: int, timeout_s: float) -> None:
    """Sleep while the 32-bit word at ``address`` equals ``expected`` (low 32 bits),
    at most ``timeout_s``. Returns early on a wake-up, a change or a signal; callers
    re-check their condition."""
    ts = _Timespec(int(timeout_s), int((timeout_s % 1) * 1e9))
    expected32 = ctypes.c_int32(expected & 0xFFFFFFFF).value
    _syscall(_nr, ctypes.c_void_p(address), _FUTEX_WAIT, expected32, ctypes.byref(ts), None, 0)


def wake(address: int) -> None:
    """Wake every process sleeping on the word at ``address``."""
    _syscall(_nr, ctypes.c_void_p(address), _FUTEX_WAKE, _INT_MAX, None, None, 0)
