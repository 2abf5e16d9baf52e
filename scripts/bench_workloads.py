"""The benchmark's workloads: what is timed, and the untimed setup before it.

Shell workloads run the real tools (dd, tar, grep, find, rm) in a child
process, so the time measured is the filesystem's, not Python's. Each
workload's `setup` runs before every repeat and brings the directory to the
state the timed part needs (it may build what an earlier workload would have
left, so `--only` works for any one of them). Add a workload by appending a
`Workload` to `WORKLOADS`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

STDLIB = Path("/usr/lib/python3.11")
QUICK_STDLIB_PARTS = ("email", "json", "http", "logging", "urllib", "xml")


@dataclass
class Sizes:
    seq_mib: int
    small_files: int
    nm_packages: int  # x 20 files each
    quick: bool

    @classmethod
    def for_mode(cls, quick: bool) -> "Sizes":
        return cls(64, 1000, 100, True) if quick else cls(1024, 10_000, 1000, False)


@dataclass
class Ctx:
    """What the workloads share within one run: sizes, prepared tarballs, cache control."""

    sizes: Sizes
    cache: Path  # outside every target: tarballs made once per run
    can_drop_caches: bool
    src_tar: Path | None = None
    nm_tar: Path | None = None

    def drop_caches(self) -> bool:
        """Empty the page, dentry and inode caches (root only); False when not allowed."""
        os.sync()
        if not self.can_drop_caches:
            return False
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True


@dataclass
class Workload:
    name: str
    what: str
    goal: float | None  # the governed/native ratio issue 2 asks for, if any
    run: Callable[[Ctx, Path], dict | None]
    setup: Callable[[Ctx, Path], dict | None] | None = None


def can_drop_caches() -> bool:
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def sh(*cmd: str, ok: tuple[int, ...] = (0,), stdout: int | None = subprocess.DEVNULL) -> None:
    r = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
    if r.returncode not in ok:
        lines = r.stderr.strip().splitlines() or [""]
        more = f" (+{len(lines) - 1} more lines)" if len(lines) > 1 else ""
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {lines[0]}{more}")


def _rm(p: Path) -> None:
    if p.exists() or p.is_symlink():
        sh("rm", "-rf", str(p))


def make_tarballs(ctx: Ctx) -> None:
    """Once per run, natively: the source tree and the node_modules-like tree as tarballs."""
    ctx.cache.mkdir(parents=True, exist_ok=True)
    ctx.src_tar = ctx.cache / "src.tar"
    if not ctx.src_tar.exists():
        parts = QUICK_STDLIB_PARTS if ctx.sizes.quick else tuple(sorted(os.listdir(STDLIB)))
        sh("tar", "-cf", str(ctx.src_tar), "-C", str(STDLIB), *parts)
    ctx.nm_tar = ctx.cache / "node_modules.tar"
    if not ctx.nm_tar.exists():
        tree = ctx.cache / "node_modules"
        _rm(tree)
        build_node_modules(tree, ctx.sizes.nm_packages)
        sh("tar", "-cf", str(ctx.nm_tar), "-C", str(ctx.cache), "node_modules")
        _rm(tree)


def build_node_modules(root: Path, packages: int) -> None:
    """Many small dirs and files like an npm install: per package 20 files in 4 dirs."""
    body = b"module.exports = function () { return 42; };\n" * 8
    for p in range(packages):
        pkg = root / (f"@scope{p % 10}/pkg-{p}" if p % 4 == 0 else f"pkg-{p}")
        for d in (pkg, pkg / "lib", pkg / "lib" / "util", pkg / "test"):
            d.mkdir(parents=True, exist_ok=True)
        (pkg / "package.json").write_text(f'{{"name": "pkg-{p}", "version": "1.0.{p}", "main": "index.js"}}\n')
        for name in ("index.js", "README.md", "LICENSE", "CHANGELOG.md"):
            (pkg / name).write_bytes(body)
        for i in range(7):
            (pkg / "lib" / f"mod{i}.js").write_bytes(body)
        for i in range(5):
            (pkg / "lib" / "util" / f"u{i}.js").write_bytes(body)
        for i in range(3):
            (pkg / "test" / f"t{i}.js").write_bytes(body)


def count_files(tar: Path) -> int:
    with tarfile.open(tar) as tf:
        return sum(1 for m in tf if m.isfile())


# ----- sequential I/O ------------------------------------------------------

def _big(d: Path) -> Path:
    return d / "big.bin"


def seq_write_setup(ctx: Ctx, d: Path) -> None:
    _big(d).unlink(missing_ok=True)
    os.sync()


def seq_write(ctx: Ctx, d: Path) -> dict:
    sh("dd", "if=/dev/zero", f"of={_big(d)}", "bs=1M", f"count={ctx.sizes.seq_mib}", "conv=fsync", "status=none")
    return {"bytes": ctx.sizes.seq_mib << 20}


def seq_read_setup(ctx: Ctx, d: Path) -> dict:
    f = _big(d)
    if not f.exists() or f.stat().st_size != ctx.sizes.seq_mib << 20:
        seq_write(ctx, d)
    return {"cache": "dropped" if ctx.drop_caches() else "warm (could not drop caches: not root)"}


def seq_read(ctx: Ctx, d: Path) -> dict:
    sh("dd", f"if={_big(d)}", "of=/dev/null", "bs=1M", "status=none")
    return {"bytes": ctx.sizes.seq_mib << 20}


# ----- many small files ------------------------------------------------------

def small_setup(ctx: Ctx, d: Path) -> None:
    _rm(d / "small")
    (d / "small").mkdir()
    os.sync()


def small_files(ctx: Ctx, d: Path) -> dict:
    """Create (100 bytes each), stat, unlink; by name relative to the directory, as a program in its cwd."""
    n = ctx.sizes.small_files
    data = b"x" * 100
    names = [f"f{i:05d}.txt" for i in range(n)]
    dfd = os.open(d / "small", os.O_RDONLY | os.O_DIRECTORY)
    try:
        t0 = time.perf_counter()
        for nm in names:
            fd = os.open(nm, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
            os.write(fd, data)
            os.close(fd)
        t1 = time.perf_counter()
        for nm in names:
            os.stat(nm, dir_fd=dfd)
        t2 = time.perf_counter()
        for nm in names:
            os.unlink(nm, dir_fd=dfd)
        t3 = time.perf_counter()
    finally:
        os.close(dfd)
    return {"files": n, "create_s": t1 - t0, "stat_s": t2 - t1, "unlink_s": t3 - t2}


# ----- a source tree -----------------------------------------------------------

def tar_x_setup(ctx: Ctx, d: Path) -> None:
    _rm(d / "src")
    (d / "src").mkdir()
    os.sync()


def tar_x(ctx: Ctx, d: Path) -> dict:
    assert ctx.src_tar is not None
    sh("tar", "-xf", str(ctx.src_tar), "-C", str(d / "src"))
    return {"tarball_bytes": ctx.src_tar.stat().st_size}


def _ensure_src(ctx: Ctx, d: Path) -> None:
    """grep and find run over the tree tar_x left (warm caches, as right after a checkout)."""
    if not (d / "src").is_dir() or not any((d / "src").iterdir()):
        tar_x_setup(ctx, d)
        tar_x(ctx, d)
        os.sync()


def grep_r(ctx: Ctx, d: Path) -> None:
    sh("grep", "-r", "-n", "-e", "import os", str(d / "src"), ok=(0, 1))


def find_names(ctx: Ctx, d: Path) -> None:
    sh("find", str(d / "src"), "-name", "*.py")


# ----- node_modules ---------------------------------------------------------

def rm_setup(ctx: Ctx, d: Path) -> dict:
    assert ctx.nm_tar is not None
    _rm(d / "node_modules")
    # Start each repeat with the same, empty kernel caches (fair to every target,
    # and a mount's daemon then holds no descriptors for earlier workloads' files).
    ctx.drop_caches()
    sh("tar", "-xf", str(ctx.nm_tar), "-C", str(d))
    os.sync()
    return {"files": ctx.sizes.nm_packages * 20}


def rm_rf(ctx: Ctx, d: Path) -> None:
    sh("rm", "-rf", str(d / "node_modules"))


WORKLOADS: list[Workload] = [
    Workload("seq_write", "dd 1 MiB blocks of zeros into a new file, fsync at the end", 1.5, seq_write,
             seq_write_setup),
    Workload("seq_read", "dd the file back in 1 MiB blocks after dropping the page cache", 1.3, seq_read,
             seq_read_setup),
    Workload("small_files", "create (100 B) + stat + unlink of N small files in one directory", None,
             small_files, small_setup),
    Workload("tar_x", "tar -x of Python's stdlib (/usr/lib/python3.11) into an empty directory", 3.0, tar_x,
             tar_x_setup),
    Workload("grep_r", "grep -r -n 'import os' over the extracted tree (warm cache)", 3.0, grep_r, _ensure_src),
    Workload("find", "find -name '*.py' over the extracted tree (warm cache)", None, find_names, _ensure_src),
    Workload("rm_rf", "rm -rf of a node_modules-like tree (20 files a package in 4 dirs)", 4.0, rm_rf, rm_setup),
]


def by_name() -> dict[str, Workload]:
    return {w.name: w for w in WORKLOADS}


def sizes_doc(s: Sizes) -> dict[str, object]:
    return {"seq_mib": s.seq_mib, "small_files": s.small_files, "node_modules_files": s.nm_packages * 20,
            "quick": s.quick, "source_tree": str(STDLIB) + ("/{" + ",".join(QUICK_STDLIB_PARTS) + "}" if s.quick
                                                            else "")}


def cleanup(ctx: Ctx) -> None:
    shutil.rmtree(ctx.cache, ignore_errors=True)
