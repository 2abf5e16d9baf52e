#!/usr/bin/env python3
"""How fast the audit writer and the content hasher are, on this machine.

    scripts/bench_audit.py [--records N] [--tasks 64] [--hash-mib 1024] [--durability process|power]

Prints records/second for sequential awaited `record()` calls (one FUSE
request at a time: each waits for its own commit), for sequential
`record_durable()` calls (acknowledged once journaled), for N concurrent tasks
(many requests in flight: group commit), for `record_nowait`, and the
content hash throughput on a file of the given size (in the page cache, so
this is the hash cost, not the disk).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentfs.core.audit import AuditEvent, AuditLog, ContentHasher, verify  # noqa: E402
from agentfs.workspace import init_workspace  # noqa: E402


def _ev(i: int) -> AuditEvent:
    return AuditEvent("create", "bench", 1000, 4242, f"/dir/file-{i}.txt")


async def _bench_records(ws, n: int, tasks: int, durability: str) -> dict[str, float]:
    settings = {"audit": {"durability": durability}}
    # Group commits in the helper process, as the mount daemons make them.
    log = AuditLog(ws, lambda: settings, "bench", helper=True)
    out: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        lat = []
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            await log.record(_ev(i))
            lat.append(time.perf_counter() - t)
        out["sequential rec/s"] = n / (time.perf_counter() - t0)
        out["sequential median latency us"] = statistics.median(lat) * 1e6
        out["sequential p99 latency us"] = sorted(lat)[int(len(lat) * 0.99)] * 1e6

        lat = []
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            await log.record_durable(_ev(i))
            lat.append(time.perf_counter() - t)
        await log.flush()
        out["record_durable rec/s (incl. commit)"] = n / (time.perf_counter() - t0)
        out["record_durable median latency us"] = statistics.median(lat) * 1e6
        out["record_durable p99 latency us"] = sorted(lat)[int(len(lat) * 0.99)] * 1e6

        per = max(1, n // tasks)

        async def worker(k: int) -> None:
            for i in range(per):
                await log.record(_ev(k * per + i))

        t0 = time.perf_counter()
        async with trio.open_nursery() as inner:
            for k in range(tasks):
                inner.start_soon(worker, k)
        out[f"{tasks} tasks rec/s"] = per * tasks / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for i in range(n):
            log.record_nowait(_ev(i))
        await log.flush()
        out["nowait rec/s"] = n / (time.perf_counter() - t0)
        await log.aclose()
    return out


def _bench_hash(dirpath: Path, mib: int) -> dict[str, float]:
    p = dirpath / "blob"
    chunk = os.urandom(1 << 20)
    with open(p, "wb") as f:
        for _ in range(mib):
            f.write(chunk)
    out = {}
    for algo in ("blake3", "sha256", "blake2b"):
        try:
            h = ContentHasher(algo)
        except ValueError:
            continue
        h.hash_path(p)  # warm the page cache
        t0 = time.perf_counter()
        h.hash_path(p)
        dt = time.perf_counter() - t0
        out[f"{algo} MB/s ({mib} MiB file)"] = mib * (1 << 20) / dt / 1e6
        out[f"{algo} seconds for the file"] = dt
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--tasks", type=int, default=64)
    ap.add_argument("--hash-mib", type=int, default=1024)
    ap.add_argument("--durability", choices=("process", "power"), default="process")
    ap.add_argument("--dir", default=None, help="where to put the scratch workspace (default: /tmp)")
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-audit-", dir=a.dir))
    try:
        ws = init_workspace(base / "ws", "")
        res = trio.run(_bench_records, ws, a.records, a.tasks, a.durability)
        v = verify(ws)
        print(f"audit writer (durability={a.durability}, {a.records} records a run):")
        for k, val in res.items():
            print(f"  {k:<38} {val:12.0f}")
        print(f"  chain verified: {v.ok}, {v.count} records, "
              f"{v.count / max(1e-9, _time(lambda: verify(ws))):.0f} records/s to verify")
        print("content hash:")
        for k, val in _bench_hash(base, a.hash_mib).items():
            print(f"  {k:<38} {val:12.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
