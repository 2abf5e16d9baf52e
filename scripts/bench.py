#!/usr/bin/env python3
"""agentfs benchmark: native directory vs bare mount vs governed mount, in one run.

Every workload runs on each target in turn, repeat after repeat (so slow
drifts of the machine hit all targets alike), and the table shows seconds and
the ratios governed/native, bare/native and governed/bare. `--json FILE`
writes the same with the machine, commit and date so a release can be
compared with the last one. Timings are figures, never pass/fail.

    sudo /opt/agentfs/venv/bin/python scripts/bench.py [--quick] [--repeat 3]
        [--only seq_read,tar_x] [--policy FILE] [--variant NAME=POLICYFILE]
        [--mount-arg TARGET=ARG] [--code TARGET=SRCDIR] [--json out.json]

e.g. the cost of audit alone: --variant noaudit= --mount-arg noaudit=--disable=audit
A change against the code before it, daemons side by side:
    git worktree add /tmp/before HEAD~1
    ... --targets governed --variant before= --code before=/tmp/before
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_targets as targets
import bench_workloads as wl

log = logging.getLogger("bench")
REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (64 MiB, 1,000 files): a smoke run")
    ap.add_argument("--repeat", type=int, default=3, help="repeats of each workload on each target (default 3)")
    ap.add_argument("--stat", choices=("median", "best"), default="median", help="which repeat the table shows")
    ap.add_argument("--only", action="append", default=[], metavar="WORKLOAD[,WORKLOAD]",
                    help=f"run only these workloads (repeatable): {', '.join(wl.by_name())}")
    ap.add_argument("--targets", default="native,bare,governed",
                    help="comma list among native, bare, governed (variants are always added)")
    ap.add_argument("--policy", type=Path, help="policy file for the governed mount (default: one open rule)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=POLICYFILE",
                    help="another governed mount with this policy, or the governed one's if empty "
                         "(repeatable; give it arguments with --mount-arg NAME=ARG); shown against governed")
    ap.add_argument("--mount-arg", action="append", default=[], metavar="TARGET=ARG",
                    help="extra `agentfs mount` argument for a mount target (repeatable)")
    ap.add_argument("--code", action="append", default=[], metavar="TARGET=SRCDIR",
                    help="run TARGET's daemon with agentfs imported from SRCDIR (e.g. a worktree of the last "
                         "commit), to compare a change with the code before it in one run")
    ap.add_argument("--rm-files", type=int, help="files in the rm_rf tree (default 20,000; 2,000 with --quick)")
    ap.add_argument("--dir", type=Path, help="base directory (default: a new one in /var/tmp); "
                                             "native and workspaces share its filesystem")
    ap.add_argument("--keep", action="store_true", help="keep the base directory afterwards")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--show", type=Path, metavar="FILE", help="print the table of a saved --json FILE and exit")
    ap.add_argument("--compare", type=Path, metavar="OLD", help="also compare the ratios with a saved --json OLD")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap.parse_args(argv)


def build_targets(a: argparse.Namespace, base: Path) -> list[targets.Target]:
    wanted = [t.strip() for t in a.targets.split(",") if t.strip()]
    unknown = set(wanted) - {"native", "bare", "governed"}
    if unknown:
        raise SystemExit(f"unknown target(s) {', '.join(sorted(unknown))}: use native, bare, governed")
    extra: dict[str, list[str]] = {}
    for item in a.mount_arg:
        name, _, arg = item.partition("=")
        extra.setdefault(name, []).append(arg)
    out: list[targets.Target] = []
    if "native" in wanted:
        out.append(targets.native(base))
    if "bare" in wanted:
        out.append(targets.mount_target(base, "bare", mount_args=["--bare", *extra.get("bare", [])]))
    if "governed" in wanted:
        policy = a.policy.read_text() if a.policy else targets.OPEN_POLICY
        out.append(targets.mount_target(base, "governed", policy, extra.get("governed", [])))
    for item in a.variant:
        name, sep, path = item.partition("=")
        if not sep or not name or name in {"native", "bare", "governed"}:
            raise SystemExit(f"--variant {item!r}: write NAME=POLICYFILE (or NAME= for the governed policy) "
                             "with a new NAME")
        text = Path(path).read_text() if path else (a.policy.read_text() if a.policy else targets.OPEN_POLICY)
        out.append(targets.mount_target(base, name, text, extra.get(name, [])))
    for item in a.code:
        name, sep, src = item.partition("=")
        match = [t for t in out if t.name == name and t.kind == "mount"]
        if not sep or not match or not (Path(src) / "agentfs" / "__init__.py").is_file():
            raise SystemExit(f"--code {item!r}: write TARGET=SRCDIR, with a mount target and a directory "
                             "holding the agentfs package")
        match[0].code = Path(src).resolve()
    return out


def selected(a: argparse.Namespace) -> list[wl.Workload]:
    names = [n.strip() for item in a.only for n in item.split(",") if n.strip()]
    known = wl.by_name()
    bad = [n for n in names if n not in known]
    if bad:
        raise SystemExit(f"unknown workload(s) {', '.join(bad)}: choose among {', '.join(known)}")
    return [w for w in wl.WORKLOADS if not names or w.name in names]


def measure(ctx: wl.Ctx, works: list[wl.Workload], tgts: list[targets.Target], repeat: int
            ) -> dict[str, dict[str, dict]]:
    """Per workload and target: every repeat's seconds and the details the workload reported.

    Each repeat starts one target further along the list: a target that always
    ran right after the same neighbour would always inherit that neighbour's
    background work (writeback of its files, its daemon's late commits), and
    the ratio between the two would carry that bias in every repeat.
    """
    res: dict[str, dict[str, dict]] = {}
    for w in works:
        res[w.name] = {t.name: {"runs": [], "details": []} for t in tgts}
        for rep in range(repeat):
            for t in tgts[rep % len(tgts):] + tgts[:rep % len(tgts)]:
                r = res[w.name][t.name]
                if r.get("error"):
                    continue
                d = t.root / "bench"
                phase = "setup"
                try:
                    d.mkdir(exist_ok=True)
                    setup_info = w.setup(ctx, d) if w.setup else None
                    waited = targets.quiesce(tgts)
                    if waited > 1:
                        log.info("waited %.1f s for the daemons to go idle", waited)
                    phase = "run"
                    cpu0, loop0 = targets.family_cpu_s(t), targets.loop_user_s(t)
                    t0 = time.perf_counter()
                    info = w.run(ctx, d)
                    dt = time.perf_counter() - t0
                    cpu1, loop1 = targets.family_cpu_s(t), targets.loop_user_s(t)
                except Exception as e:  # a failing target is reported, the others still measured
                    r["error"] = f"{phase}: {e}"[:300]
                    log.warning("%-12s %-10s repeat %d: FAILED in %s", w.name, t.name, rep + 1, r["error"])
                    continue
                r["runs"].append(dt)
                cpu = {} if cpu0 is None or cpu1 is None else {"daemon_cpu_s": round(cpu1 - cpu0, 2)}
                if cpu and loop0 is not None and loop1 is not None:
                    cpu["loop_user_s"] = round(loop1 - loop0, 2)
                r["details"].append({**(setup_info or {}), **(info or {}), **cpu})
                log.info("%-12s %-10s repeat %d: %.3f s%s", w.name, t.name, rep + 1, dt,
                         f" (daemon CPU {cpu['daemon_cpu_s']:.2f} s, loop user {cpu.get('loop_user_s')} s)"
                         if cpu else "")
    return res


def ratio_pairs(names: list[str]) -> list[tuple[str, str]]:
    """Which ratios to show: each mount against native, governed against bare, variants against governed."""
    pairs = []
    mounts = [n for n in names if n != "native"]
    if "native" in names:
        pairs += [(m, "native") for m in mounts]
    if "governed" in names and "bare" in names:
        pairs.append(("governed", "bare"))
    if "governed" in names:
        pairs += [(m, "governed") for m in mounts if m not in ("bare", "governed")]
    return pairs


def summarise(works: list[wl.Workload], raw: dict, names: list[str], stat: str) -> dict:
    pick = statistics.median if stat == "median" else min
    out = {}
    for w in works:
        ok = [n for n in names if not raw[w.name][n].get("error")]
        secs = {n: pick(raw[w.name][n]["runs"]) for n in ok}
        ratios = {f"{a}/{b}": secs[a] / secs[b] for a, b in ratio_pairs(names)
                  if a in secs and b in secs and secs[b] > 0}
        entry = {"what": w.what, "goal_governed_over_native": w.goal, "seconds": secs, "ratios": ratios,
                 "runs": {n: raw[w.name][n]["runs"] for n in names},
                 "details": {n: raw[w.name][n]["details"][-1] for n in ok},
                 "errors": {n: raw[w.name][n]["error"] for n in names if n not in ok}}
        g = ratios.get("governed/native")
        if w.goal is not None and g is not None:
            entry["goal_met"] = g <= w.goal
        out[w.name] = entry
    return out


def resummarise(doc: dict, stat: str) -> dict:
    """The summary of a saved run, recomputed from its raw repeats (so --stat can differ)."""
    names = [t["name"] for t in doc["targets"]]
    works = [wl.Workload(name, e["what"], e["goal_governed_over_native"], lambda c, d: None)
             for name, e in doc["workloads"].items()]
    raw = {name: {n: {"runs": e["runs"].get(n, []), "details": [e["details"].get(n, {})],
                      "error": e.get("errors", {}).get(n)} for n in names}
           for name, e in doc["workloads"].items()}
    return summarise(works, raw, names, stat)


def compare(new: dict, old: dict) -> str:
    """Each ratio of this run beside the same ratio of an older one (e.g. the last release)."""
    rows = [["workload", "ratio", "old", "new", "change"]]
    for name, e in new.items():
        for pair, r in e["ratios"].items():
            before = old.get(name, {}).get("ratios", {}).get(pair)
            if before is None:
                continue
            rows.append([name, pair, f"{before:.2f}x", f"{r:.2f}x", f"{(r / before - 1) * 100:+.0f}%"])
    if len(rows) == 1:
        return "nothing to compare: no workload and ratio in common"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table(summary: dict, names: list[str], stat: str) -> str:
    pairs = [f"{a}/{b}" for a, b in ratio_pairs(names)]
    head = ["workload"] + [f"{n} s" for n in names] + pairs + ["goal"]
    rows = [head]
    for name, e in summary.items():
        goal = ""
        if e["goal_governed_over_native"] is not None:
            goal = f"<= {e['goal_governed_over_native']:g}x"
            if "goal_met" in e:
                goal += " ok" if e["goal_met"] else " MISSED"
        rows.append([name] + [f"{e['seconds'][n]:.3f}" if n in e["seconds"] else "ERROR" for n in names]
                    + [f"{e['ratios'][p]:.2f}x" if p in e["ratios"] else "-" for p in pairs] + [goal])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    errors = [f"{name} on {n}: {msg}" for name, e in summary.items() for n, msg in e["errors"].items()]
    return "\n".join(lines + [f"ERROR {x}" for x in errors]) + \
        f"\n({stat} of the repeats; ratios are time / time, lower is better)"


def machine() -> dict:
    def first(path: str, key: str) -> str | None:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return None

    try:
        import pyfuse3
        pyfuse3_version = pyfuse3.__version__
    except ImportError:
        pyfuse3_version = None
    return {"hostname": platform.node(), "kernel": platform.release(), "cpu": first("/proc/cpuinfo", "model name"),
            "cpus": os.cpu_count(), "mem_total": first("/proc/meminfo", "MemTotal"),
            "python": platform.python_version(), "pyfuse3": pyfuse3_version, "loadavg": os.getloadavg()}


def _mount_of(path: Path) -> tuple[str, str, str]:
    """(device, mountpoint, type) of the mount holding `path`."""
    best = ("?", "", "?")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        f = line.split(" ")
        if str(path).startswith(f[1]) and len(f[1]) >= len(best[1]):
            best = (f[0], f[1], f[2])
    return best


def ext4_without_journal(path: Path) -> bool:
    """Whether `path` is on ext4 mounted without a journal (no jbd2 entry for its device).

    Such an ext4 will not reuse an inode freed in the last seconds (minutes,
    while the inode table block is dirty), and every new inode's search walks
    past all of them: a create costs time in proportion to the files deleted
    near it lately, for native and mounts alike (docs/BENCHMARKS.md).
    """
    dev, _, fstype = _mount_of(path)
    if fstype != "ext4" or not dev.startswith("/dev/"):
        return False
    name = os.path.basename(os.path.realpath(dev))
    try:
        return not any(e.startswith(name + "-") for e in os.listdir("/proc/fs/jbd2"))
    except OSError:
        return True  # no jbd2 at all: no ext4 here has a journal


def fs_of(path: Path) -> str:
    dev, mnt, fstype = _mount_of(path)
    return f"{fstype} ({dev} on {mnt}{', no journal' if ext4_without_journal(path) else ''})"


def git_info() -> dict:
    def git(*args: str) -> str | None:
        r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "describe": git("describe", "--always", "--dirty"),
            "dirty": bool(status) if status is not None else None}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    if a.show:
        doc = json.loads(a.show.read_text())
        summary = resummarise(doc, a.stat)
        names = [t["name"] for t in doc["targets"]]
        print(f"{a.show}: {doc['date']}, {doc['git'].get('describe')}, repeat {doc['repeat']}")
        print(table(summary, names, a.stat))
        if a.compare:
            print(compare(summary, resummarise(json.loads(a.compare.read_text()), a.stat)))
        return 0
    works = selected(a)
    if a.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    if os.geteuid() != 0:
        raise SystemExit("bench.py must run as root: `agentfs mount` needs it, and so does dropping the page cache")
    base = a.dir or Path(tempfile.mkdtemp(prefix="agentfs-bench-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    tgts = build_targets(a, base)
    names = [t.name for t in tgts]
    sizes = wl.Sizes.for_mode(a.quick)
    if a.rm_files:
        sizes.nm_packages = max(1, a.rm_files // 20)
    ctx = wl.Ctx(sizes, base / "cache", wl.can_drop_caches())
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    load_start = os.getloadavg()
    try:
        wl.make_tarballs(ctx)
        for t in tgts:
            targets.start(t)
        raw = measure(ctx, works, tgts, a.repeat)
    finally:
        for t in tgts:
            targets.stop(t)
        if not a.keep:
            targets.remove_base(base)
    summary = summarise(works, raw, names, a.stat)
    print(table(summary, names, a.stat))
    if not ctx.can_drop_caches and any(w.name == "seq_read" for w in works):
        print("note: the page cache could not be dropped: seq_read read warm caches")
    if ext4_without_journal(base) and any(w.name in ("small_files", "tar_x") for w in works):
        print(f"note: {base} is on ext4 without a journal, where a create near recently deleted files walks "
              "past each of them: small_files and tar_x are slower for every target, native included "
              "(docs/BENCHMARKS.md; --dir on a journaled filesystem measures without it)")
    if a.compare:
        print(compare(summary, resummarise(json.loads(a.compare.read_text()), a.stat)))
    if a.json:
        doc = {"schema": 1, "date": started.isoformat(timespec="seconds"),
               "elapsed_s": round(time.monotonic() - t_start, 1), "git": git_info(), "machine": machine(),
               "filesystem": fs_of(base), "sizes": wl.sizes_doc(ctx.sizes), "repeat": a.repeat, "stat": a.stat,
               "drop_caches": ctx.can_drop_caches, "targets": [t.describe() for t in tgts],
               "loadavg_at_start": load_start, "workloads": summary}
        a.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
