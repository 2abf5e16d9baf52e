"""Group commits of the audit log in a helper process, off the daemon's GIL.

The commit is mostly Python (the hash chain, binding rows) plus SQLite. In a
worker thread of the daemon that Python takes the GIL from the FUSE loop
whenever the loop makes a system call, and the loop waits for it back; on
`rm -rf` group commits cost ~8 % of the run that way, several times their own
CPU time. A helper process does the same transaction (`store.append`, with
the same records, in-flight changes and journal mark) with its own
interpreter, and the loop only pickles the batch onto a pipe and reads back
the seqs.

Nothing about durability changes: a record is acknowledged once it is in the
daemon's journal (or, with `durability = "power"`, once the helper's commit
has returned), and a batch the helper never committed is retried or replayed
from the journal as before. The helper exits when its pipe closes, so it
never outlives its daemon by more than the commit in hand.

Protocol: frames of a 4-byte little-endian length and a pickle, over the
helper's stdin and stdout, which no one else holds.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
from typing import Any

import trio

from agentfs.store import audit_log as store

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<I")


class CommitterError(Exception):
    """The helper failed a commit (its message) or is gone."""


Request = tuple[str, list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[str, int]],
                "tuple[str, int] | None"]


class Committer:
    """The daemon's end: one helper process, one commit at a time."""

    def __init__(self, ws_root: os.PathLike[str] | str) -> None:
        self.ws_root = str(ws_root)
        self._proc: subprocess.Popen[bytes] | None = None
        self._send: trio.lowlevel.FdStream | None = None
        self._recv: trio.lowlevel.FdStream | None = None
        self._buf = bytearray()

    def _spawn(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "agentfs.core.audit_committer", self.ws_root],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/", close_fds=True)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._send = trio.lowlevel.FdStream(os.dup(self._proc.stdin.fileno()))
        self._recv = trio.lowlevel.FdStream(os.dup(self._proc.stdout.fileno()))
        self._proc.stdin.close()
        self._proc.stdout.close()
        self._buf.clear()

    async def commit(self, request: Request) -> list[int]:
        """The seqs of the batch, once the helper has committed it."""
        if self._proc is None:
            self._spawn()
        assert self._send is not None
        data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            await self._send.send_all(_HEADER.pack(len(data)) + data)
            status, value = pickle.loads(await self._frame())
        except BaseException as e:
            # Cancelled or broken mid-exchange: the pipe is out of step, so start over.
            await self._stop(grace_s=0.0)
            if isinstance(e, (OSError, trio.BrokenResourceError, trio.ClosedResourceError, EOFError)):
                raise CommitterError(f"the audit commit helper is gone: {e or type(e).__name__}") from e
            raise
        if status != "ok":
            raise CommitterError(value)
        return value

    async def _frame(self) -> bytes:
        assert self._recv is not None
        while True:
            if len(self._buf) >= _HEADER.size:
                (n,) = _HEADER.unpack_from(self._buf)
                if len(self._buf) >= _HEADER.size + n:
                    frame = bytes(self._buf[_HEADER.size:_HEADER.size + n])
                    del self._buf[:_HEADER.size + n]
                    return frame
            chunk = await self._recv.receive_some(1 << 16)
            if not chunk:
                raise EOFError("the helper closed its end")
            self._buf += chunk

    async def aclose(self) -> None:
        """Close the pipe; the helper finishes the commit in hand (none, here) and exits."""
        await self._stop(grace_s=30.0)

    async def _stop(self, grace_s: float) -> None:
        """Close both ends and reap the helper, killing it at once or after `grace_s`."""
        proc, self._proc = self._proc, None
        streams, self._send, self._recv = (self._send, self._recv), None, None
        with trio.CancelScope(shield=True):
            for stream in streams:
                if stream is not None:
                    await stream.aclose()
            if proc is None:
                return
            if grace_s > 0:
                try:
                    await trio.to_thread.run_sync(proc.wait, grace_s)
                    return
                except subprocess.TimeoutExpired:
                    log.error("audit: the commit helper did not exit; killing it")
            proc.kill()
            await trio.to_thread.run_sync(proc.wait)


def apply_batch(conn: Any, request: Request, genesis: str, chain: store.ChainFn) -> list[int]:
    """One batch as one transaction; the helper and the daemon's own worker thread both commit with it."""
    mode, recs, adds, dels, mark = request
    conn.execute(f"PRAGMA synchronous={mode}")
    out = store.append(conn, [store.NewRecord(*r) for r in recs], genesis, chain,
                       [store.InflightAdd(*a) for a in adds], dels, mark)
    return [seq for seq, _h in out]


def main() -> None:
    from agentfs.core.audit_chain import GENESIS, record_hash
    from agentfs.store import db
    from agentfs.workspace import Workspace

    # A Ctrl-C or a service stop reaches the whole process group; the helper
    # leaves when its daemon closes the pipe, after the daemon's last flush.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ws = Workspace.open(sys.argv[1])
    conn = db.connect(ws)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = inp.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return  # the daemon closed the pipe (or died)
        (n,) = _HEADER.unpack(header)
        body = inp.read(n)
        if len(body) < n:
            return
        try:
            reply: tuple[str, Any] = ("ok", apply_batch(conn, pickle.loads(body), GENESIS, record_hash))
        except Exception as e:  # noqa: BLE001 - the daemon decides what a failed commit means
            reply = ("error", f"{type(e).__name__}: {e}")
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(_HEADER.pack(len(data)) + data)
        out.flush()


if __name__ == "__main__":
    main()
