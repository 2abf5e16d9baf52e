"""A long-lived client process that acts for one agent on a mount.

Permission tests make hundreds of small requests as several Unix users;
starting a Python per request would cost seconds. A worker is started once
(as a Unix user, under `agentfs run`, or both) and evaluates one Python
expression (or block) per request, answering with the value or the errno
name. The worker's pid stays the same, so identity is resolved once per
worker by the daemon, as it would be for a real agent.
"""

from __future__ import annotations

import json
import pwd
import subprocess
import sys
from typing import Any, Sequence

_LOOP = r"""
import errno, json, os, socket, stat, sys, subprocess
for line in sys.stdin:
    req = json.loads(line)
    ns = {"os": os, "errno": errno, "socket": socket, "stat": stat, "subprocess": subprocess, "sys": sys}
    ns.update(req["vars"])
    try:
        if req["block"]:
            exec(req["code"], ns)
            value = ns.get("result")
        else:
            value = eval(req["code"], ns)
        out = {"ok": True, "value": value}
    except OSError as e:
        out = {"ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno)), "msg": str(e)}
    except Exception as e:
        out = {"ok": False, "errno": None, "msg": repr(e)}
    sys.stdout.write(json.dumps(out, default=repr) + "\n")
    sys.stdout.flush()
"""


class Worker:
    """One client process; `ok(...)` expects success, `err(...)` expects an errno and returns its name."""

    def __init__(self, prefix: Sequence[str] = (), user: str | None = None,
                 pass_fds: Sequence[int] = (), cwd: str | None = None) -> None:
        kw: dict[str, Any] = {}
        if user is not None:
            pw = pwd.getpwnam(user)
            kw.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        self.proc = subprocess.Popen([*prefix, sys.executable, "-c", _LOOP], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     pass_fds=tuple(pass_fds), cwd=cwd or "/", **kw)
        self.label = user or "root"

    @property
    def pid(self) -> int:
        """The pid of the Python that makes the requests (under `agentfs run` it is the session root)."""
        return int(self.ok("os.getpid()"))

    def call(self, code: str, block: bool = False, **vars: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"code": code, "block": block, "vars": vars}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"worker {self.label} died: {err}")
        return json.loads(line)

    def ok(self, code: str, block: bool = False, **vars: Any) -> Any:
        r = self.call(code, block, **vars)
        assert r["ok"], f"{self.label}: {code} {vars} failed: {r}"
        return r["value"]

    def err(self, code: str, block: bool = False, **vars: Any) -> str:
        r = self.call(code, block, **vars)
        assert not r["ok"], f"{self.label}: {code} {vars} unexpectedly succeeded: {r}"
        assert r["errno"], f"{self.label}: {code} {vars} failed without an errno: {r}"
        return r["errno"]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Snippets the tests send often.
READ = "open(p, 'rb').read().decode()"
STAT_SIZE = "os.stat(p).st_size"
LIST = "sorted(os.listdir(p))"

