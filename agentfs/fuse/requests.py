"""What every FUSE handler shares: the errno mapping, name checks, open flags.

An exception that escapes a pyfuse3 handler ends the main loop and the
mount with it, so every handler is wrapped by `handler`.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat as stat_mod
from typing import Any, Awaitable, Callable

import pyfuse3

from agentfs.core.governor import Denied
from agentfs.fuse.inodes import Stale

log = logging.getLogger("agentfs.fuse.operations")

NAME_MAX = 255
# O_NOFOLLOW was honoured by the kernel's lookup already; on the /proc
# re-open of a descriptor it would refuse every file with ELOOP.
OPEN_DROP = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW
AT_FDCWD = -100
SUID_SGID = stat_mod.S_ISUID | stat_mod.S_ISGID


def handler(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Map every failure of a handler to a FUSEError; never let one escape."""

    @functools.wraps(fn)
    async def wrapper(self: Any, *args: Any) -> Any:
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Denied as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Stale:
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        except Exception:
            log.exception("internal error in %s%r", fn.__name__, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def check_name(name: bytes) -> str:
    """A single path component, as the backing filesystem would accept it."""
    if len(name) > NAME_MAX:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise pyfuse3.FUSEError(errno.EINVAL)
    return os.fsdecode(name)


def fd_for_write(flags: int) -> bool:
    return (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
