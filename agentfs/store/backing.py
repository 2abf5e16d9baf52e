"""System calls on the backing tree that Python's `os` module does not offer.

Everything here works relative to directory descriptors with single path
components, so a caller can never be led out of the tree by a symlink or `..`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_libc.renameat2.restype = ctypes.c_int


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_libc.utimensat.restype = ctypes.c_int

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000


def _check(ret: int) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def renameat2(olddirfd: int, oldname: str, newdirfd: int, newname: str, flags: int = 0) -> None:
    """rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE, which os.rename lacks."""
    _check(_libc.renameat2(olddirfd, os.fsencode(oldname), newdirfd, os.fsencode(newname), flags))


def utimensat(dirfd: int, name: str, atime_ns: int | None, mtime_ns: int | None, *, follow: bool = False) -> None:
    """Set times with UTIME_OMIT for None, as utimensat(2) does and os.utime cannot."""
    times = (_Timespec * 2)()
    for i, ns in enumerate((atime_ns, mtime_ns)):
        if ns is None:
            times[i].tv_sec, times[i].tv_nsec = 0, UTIME_OMIT
        else:
            times[i].tv_sec, times[i].tv_nsec = divmod(ns, 1_000_000_000)
    flags = 0 if follow else AT_SYMLINK_NOFOLLOW
    _check(_libc.utimensat(dirfd, os.fsencode(name), times, flags))


def join(parent_path: str, name: str) -> str:
    """A workspace path (rooted at "/") of `name` inside the folder at `parent_path`."""
    return parent_path + name if parent_path == "/" else f"{parent_path}/{name}"


def proc_path(fd: int) -> str:
    """The /proc magic link of a descriptor: re-opens exactly that object, never a path in the tree."""
    return f"/proc/self/fd/{fd}"
