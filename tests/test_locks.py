"""Unit tests of the lock manager (no FUSE): modes, subtrees, waiting, leases, tokens, fairness."""

from __future__ import annotations

import threading

import pytest
import trio

from agentfs.core.locks import (
    Access, Lock, LockConflict, LockManager, LockMode, format_lock_xattr, format_locks_listing,
    list_locks, parse_lock_xattr, parse_locks_listing,
)
from agentfs.workspace import init_workspace

EX, SH = LockMode.EXCLUSIVE, LockMode.SHARED
R, W, D = Access.READ, Access.WRITE, Access.DELETE


@pytest.fixture
def ws(tmp_path):
    return init_workspace(tmp_path / "ws", "")


@pytest.fixture
def settings():
    return {"default_ttl": 60.0, "wait_seconds": 0.3}


@pytest.fixture
def make(ws, settings):
    made: list[LockManager] = []

    def _make(session_alive=lambda s: True) -> LockManager:
        m = LockManager(ws, lambda: settings, session_alive)
        made.append(m)
        return m

    yield _make
    for m in made:
        m.close()


@pytest.fixture
def lm(make):
    return make()


async def until(pred, timeout: float = 5.0) -> None:
    """Poll `pred` until true; fail after `timeout` seconds."""
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.005)


# ---- modes ---------------------------------------------------------------

async def test_exclusive_forbids_everything_to_others_not_to_holder(lm):
    lock = await lm.acquire("alice", "/doc.md", EX)
    for access in (R, W, D):
        assert lm.conflict("bob", "/doc.md", access) == lock
        assert lm.conflict("alice", "/doc.md", access) is None
    assert lm.conflict("bob", "/other.md", W) is None


async def test_shared_allows_reading_forbids_change(lm):
    await lm.acquire("alice", "/doc.md", SH)
    assert lm.conflict("bob", "/doc.md", R) is None
    assert lm.conflict("bob", "/doc.md", W).agent == "alice"
    assert lm.conflict("bob", "/doc.md", D).agent == "alice"
    # a sole shared holder may change it ...
    assert lm.conflict("alice", "/doc.md", W) is None
    # ... but with a second shared holder, neither may
    await lm.acquire("bob", "/doc.md", SH)
    assert lm.conflict("alice", "/doc.md", W).agent == "bob"
    assert lm.conflict("bob", "/doc.md", W).agent == "alice"
    assert {lk.agent for lk in lm.get("/doc.md")} == {"alice", "bob"}


async def test_acquire_conflicts_between_modes(lm):
    await lm.acquire("alice", "/a", SH)
    await lm.acquire("bob", "/a", SH)
    with pytest.raises(LockConflict) as info:
        await lm.acquire("carol", "/a", EX)
    assert info.value.lock.mode is SH
    await lm.acquire("carol", "/b", EX)
    with pytest.raises(LockConflict) as info:
        await lm.acquire("alice", "/b", SH)
    assert info.value.lock.agent == "carol"


# ---- subtrees --------------------------------------------------------------

async def test_directory_lock_covers_subtree_and_not_siblings(lm):
    lock = await lm.acquire("alice", "/research", EX)
    assert lm.conflict("bob", "/research/deep/notes.md", R) == lock
    assert lm.conflict("bob", "/research", W) == lock
    assert lm.conflict("bob", "/researchers/notes.md", W) is None
    assert lm.conflict("bob", "/", R) is None


async def test_subtree_check_sees_locks_below(lm):
    lock = await lm.acquire("alice", "/proj/src/main.py", SH)
    assert lm.conflict("bob", "/proj", D) is None
    assert lm.conflict("bob", "/proj", D, subtree=True) == lock
    assert lm.conflict("bob", "/", D, subtree=True) == lock
    assert lm.conflict("bob", "/proj2", D, subtree=True) is None
    assert lm.conflict("alice", "/proj", D, subtree=True) is None


async def test_grants_respect_ancestors_and_descendants(lm):
    await lm.acquire("alice", "/proj/src/main.py", EX)
    with pytest.raises(LockConflict):
        await lm.acquire("bob", "/proj", SH)
    with pytest.raises(LockConflict):
        await lm.acquire("bob", "/proj/src/main.py/x", SH)
    await lm.acquire("bob", "/proj/doc", EX)
    await lm.acquire("alice", "/proj/src", EX)  # own locks never conflict


async def test_root_lock(lm):
    await lm.acquire("alice", "/", SH)
    assert lm.conflict("bob", "/any/where", W).path == "/"
    with pytest.raises(LockConflict):
        await lm.acquire("bob", "/x", EX)


# ---- waiting -----------------------------------------------------------------

async def test_wait_clear_returns_when_another_task_releases(lm):
    await lm.acquire("alice", "/f", EX)
    done = trio.Event()

    async def bob():
        await lm.wait_clear("bob", "/f", R, timeout=5)
        done.set()

    async with trio.open_nursery() as n:
        n.start_soon(bob)
        await trio.sleep(0.05)
        assert not done.is_set()
        await lm.release("alice", "/f")
        with trio.fail_after(2):
            await done.wait()


async def test_wait_clear_times_out_with_conflict(lm, settings):
    lock = await lm.acquire("alice", "/f", EX)
    t0 = trio.current_time()
    with pytest.raises(LockConflict) as info:
        await lm.wait_clear("bob", "/f", W)  # default: settings wait_seconds (0.3)
    assert info.value.lock == lock
    assert trio.current_time() - t0 >= settings["wait_seconds"]
    await lm.wait_clear("alice", "/f", W, timeout=0)


async def test_acquire_waits_then_succeeds(lm):
    await lm.acquire("alice", "/f", EX)

    async def release_soon():
        await until(lambda: any(q.agent == "bob" for q in lm.queued()))
        await lm.release("alice", "/f")

    async with trio.open_nursery() as n:
        n.start_soon(release_soon)
        lock = await lm.acquire("bob", "/f", EX, wait=5)
    assert lock.agent == "bob"
    assert lm.queued() == []


async def test_failed_request_keeps_its_place_for_a_prompt_retry(lm, monkeypatch):
    """A client retrying on EAGAIN (wait=0 each time) is not overtaken by later requests."""
    from agentfs.core import locks as locks_mod
    monkeypatch.setattr(locks_mod, "INTENT_GRACE_NS", 300_000_000)
    await lm.acquire("alice", "/f", SH)
    with pytest.raises(LockConflict):
        await lm.acquire("bob", "/f", EX, wait=0.05)
    assert [q.agent for q in lm.queued()] == ["bob"]
    with pytest.raises(LockConflict):
        await lm.acquire("dave", "/f", EX)  # a try-lock (wait=0) does not queue
    assert [q.agent for q in lm.queued()] == ["bob"]
    with pytest.raises(LockConflict) as info:
        await lm.acquire("carol", "/f", SH)
    assert info.value.lock.agent == "bob" and info.value.lock.token == 0
    with pytest.raises(LockConflict):
        await lm.acquire("bob", "/f", EX)  # the retry takes over its own intent
    assert [q.agent for q in lm.queued()] == ["bob"]
    await lm.release("alice", "/f")
    assert (await lm.acquire("bob", "/f", EX)).agent == "bob"
    assert lm.queued() == []


async def test_abandoned_intent_expires(lm, monkeypatch):
    from agentfs.core import locks as locks_mod
    monkeypatch.setattr(locks_mod, "INTENT_GRACE_NS", 100_000_000)
    await lm.acquire("alice", "/f", SH)
    with pytest.raises(LockConflict):
        await lm.acquire("bob", "/f", EX, wait=0.05)
    with pytest.raises(LockConflict):
        await lm.acquire("carol", "/f", SH)
    await until(lambda: lm.queued() == [])
    await lm.acquire("carol", "/f", SH)
    assert await lm.expire() == []


async def test_cancelled_waiter_leaves_no_intent(lm):
    await lm.acquire("alice", "/f", EX)
    with trio.move_on_after(0.1):
        await lm.acquire("bob", "/f", EX, wait=5)
    assert lm.queued() == []


async def test_waiting_does_not_block_other_tasks(lm):
    await lm.acquire("alice", "/f", EX)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    async with trio.open_nursery() as n:
        n.start_soon(ticker)
        with pytest.raises(LockConflict):
            await lm.wait_clear("bob", "/f", R, timeout=0.3)
        n.cancel_scope.cancel()
    assert ticks >= 10


# ---- leases --------------------------------------------------------------------

async def test_lease_expires_by_itself_and_is_purged(lm):
    lock = await lm.acquire("alice", "/f", EX, ttl=0.15)
    assert lm.conflict("bob", "/f", R) == lock
    await until(lambda: lm.conflict("bob", "/f", R) is None)
    assert lm.list() == []
    await lm.acquire("bob", "/f", EX)  # the expired row does not stand in the way
    assert await lm.expire() == [lock]
    assert await lm.expire() == []


async def test_renewal_extends_lease_and_keeps_token(lm):
    first = await lm.acquire("alice", "/f", EX, ttl=0.3)
    again = await lm.acquire("alice", "/f", EX, ttl=60)
    assert again.token == first.token
    assert again.acquired_ns == first.acquired_ns
    assert again.expires_ns > first.expires_ns
    await trio.sleep(0.4)  # past the first lease: the renewal must still hold
    assert lm.conflict("bob", "/f", R) == again


async def test_reacquire_after_expiry_is_a_new_grant(lm):
    first = await lm.acquire("alice", "/f", EX, ttl=0.05)
    await until(lambda: lm.get("/f") == [])
    second = await lm.acquire("alice", "/f", EX)
    assert second.token > first.token


async def test_default_ttl_from_settings(lm, settings):
    settings["default_ttl"] = 10.0
    lock = await lm.acquire("alice", "/f", EX)
    assert 9.5e9 <= lock.expires_ns - lock.acquired_ns <= 10.5e9


async def test_upgrade_when_sole_holder_only(lm):
    shared = await lm.acquire("alice", "/f", SH)
    up = await lm.acquire("alice", "/f", EX)
    assert up.mode is EX and up.token > shared.token
    assert lm.conflict("bob", "/f", R) == up
    await lm.acquire("alice", "/f", SH)  # downgrade
    await lm.acquire("bob", "/f", SH)
    with pytest.raises(LockConflict) as info:
        await lm.acquire("alice", "/f", EX)
    assert info.value.lock.agent == "bob"


# ---- tokens -------------------------------------------------------------------------

async def test_fencing_tokens_monotonic_across_managers_and_restarts(make):
    m1, m2 = make(), make()
    tokens = []
    for i in range(3):
        tokens.append((await m1.acquire("a", f"/x{i}", EX)).token)
        tokens.append((await m2.acquire("b", f"/y{i}", EX)).token)
    for i in range(3):
        await m1.release("a", f"/x{i}")
        await m2.release("b", f"/y{i}")
    m1.close()
    m3 = make()  # a daemon restart: the counter lives in the database
    tokens.append((await m3.acquire("a", "/x0", EX)).token)
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


# ---- sessions -------------------------------------------------------------------------

async def test_lock_dies_with_its_session(make):
    alive = {7: True}
    threads = set()

    def session_alive(s):
        threads.add(threading.current_thread())
        return alive.get(s, False)

    lm = make(session_alive)
    lock = await lm.acquire("writer", "/draft.md", EX, session_id=7)
    assert lm.conflict("bob", "/draft.md", R) == lock
    with pytest.raises(LockConflict):
        await lm.acquire("bob", "/draft.md", SH)
    assert await lm.expire() == []
    alive[7] = False
    assert lm.conflict("bob", "/draft.md", R) is None
    assert await lm.expire() == [lock]
    assert list_locks(lm._ws) == []
    # the identity resolver is not thread-safe: it is only ever asked on the trio thread
    assert threads == {threading.main_thread()}


async def test_dead_session_lock_does_not_block_grants(make):
    alive = {7: True}
    lm = make(lambda s: alive.get(s, False))
    await lm.acquire("writer", "/draft.md", EX, session_id=7)
    alive[7] = False
    got = await lm.acquire("bob", "/draft.md", EX)
    assert lm.get("/draft.md") == [got]


# ---- two daemons ------------------------------------------------------------------------

async def test_two_managers_see_each_others_locks(make):
    d1, d2 = make(), make()
    lock = await d1.acquire("alice", "/shared/plan.md", EX)
    assert d2.conflict("bob", "/shared/plan.md", R) == lock
    with pytest.raises(LockConflict):
        await d2.acquire("bob", "/shared", SH)
    with pytest.raises(PermissionError):
        await d2.release("bob", "/shared/plan.md")
    assert d1.conflict("bob", "/shared/plan.md", R) == lock

    async def release_on_d1():
        await until(lambda: d1.queued() != [])
        await d1.release("alice", "/shared/plan.md")

    async with trio.open_nursery() as n:
        n.start_soon(release_on_d1)
        got = await d2.acquire("bob", "/shared/plan.md", EX, wait=5)
    assert d1.conflict("alice", "/shared/plan.md", W) == got


async def test_wait_clear_sees_release_by_other_manager(make):
    d1, d2 = make(), make()
    await d1.acquire("alice", "/f", EX)
    async with trio.open_nursery() as n:
        n.start_soon(d2.wait_clear, "bob", "/f", W, False, 5.0)
        await trio.sleep(0.05)
        await d1.release("alice", "/f")


# ---- release -------------------------------------------------------------------------------

async def test_release_rules(lm):
    assert await lm.release("alice", "/f") is None
    lock = await lm.acquire("alice", "/f", EX)
    with pytest.raises(PermissionError):
        await lm.release("bob", "/f")
    assert await lm.release("bob", "/f", force=True) == lock
    assert lm.get("/f") == []
    mine = await lm.acquire("bob", "/f", SH)
    assert await lm.release("bob", "/f") == mine


async def test_forced_acquire_breaks_lock_on_that_path_only(lm):
    await lm.acquire("alice", "/f", EX)
    lock = await lm.acquire("bob", "/f", EX, force=True)
    assert lm.get("/f") == [lock]
    await lm.acquire("alice", "/dir", EX)
    with pytest.raises(LockConflict):
        await lm.acquire("bob", "/dir/x", EX, force=True)
    assert lm.get("/dir")[0].agent == "alice"


# ---- fairness --------------------------------------------------------------------------------

async def test_queued_exclusive_blocks_later_shared(make):
    d1, d2 = make(), make()
    await d1.acquire("reader1", "/doc", SH)
    async with trio.open_nursery() as n:
        got: list[Lock] = []

        async def writer():
            got.append(await d1.acquire("writer", "/doc", EX, wait=5))

        n.start_soon(writer)
        await until(lambda: d2.queued() != [])
        # a later shared request waits behind the queued exclusive, on either daemon
        with pytest.raises(LockConflict) as info:
            await d2.acquire("reader2", "/doc/part", SH, wait=0.05)
        assert info.value.lock.agent == "writer" and info.value.lock.token == 0
        # the holder may still renew its lease
        await d1.acquire("reader1", "/doc", SH)
        await d1.release("reader1", "/doc")
    assert got and got[0].agent == "writer"


async def test_exclusive_not_starved_by_stream_of_shared(lm):
    """Readers keep overlapping shared locks; the writer must still get in."""
    granted_at: dict[str, float] = {}
    stop = trio.Event()

    async def reader(name: str, delay: float):
        await trio.sleep(delay)
        while not stop.is_set():
            try:
                await lm.acquire(name, "/doc", SH, wait=2)
            except LockConflict:
                continue
            await trio.sleep(0.06)
            await lm.release(name, "/doc")
            await trio.sleep(0)

    async def writer():
        await trio.sleep(0.1)
        lock = await lm.acquire("writer", "/doc", EX, wait=3)
        granted_at["writer"] = trio.current_time()
        assert lm.conflict("reader0", "/doc", R) == lock
        await lm.release("writer", "/doc")
        stop.set()

    async with trio.open_nursery() as n:
        for i in range(4):
            n.start_soon(reader, f"reader{i}", i * 0.02)
        n.start_soon(writer)
    assert "writer" in granted_at


# ---- rename and delete --------------------------------------------------------------------------

async def test_on_rename_moves_locks_with_subtree(lm):
    await lm.acquire("alice", "/a", EX)
    await lm.acquire("alice", "/a/b/c", SH)
    await lm.acquire("bob", "/ab", EX)
    lm.on_rename("/a", "/z")
    assert sorted((lk.path, lk.agent) for lk in lm.list()) == [
        ("/ab", "bob"), ("/z", "alice"), ("/z/b/c", "alice")]
    assert lm.conflict("carol", "/z/b/c", R).agent == "alice"
    assert lm.conflict("carol", "/a/b/c", R) is None


async def test_on_rename_over_own_locked_target_keeps_target_lock(lm):
    target = await lm.acquire("alice", "/doc.md", EX)
    await lm.acquire("alice", "/doc.md.tmp", SH)
    lm.on_rename("/doc.md.tmp", "/doc.md")
    assert lm.list() == [target]


async def test_on_exchange_swaps_locks(lm):
    await lm.acquire("alice", "/a", EX)
    await lm.acquire("alice", "/a/x", SH)
    await lm.acquire("bob", "/b", SH)
    lm.on_exchange("/a", "/b")
    assert sorted((lk.path, lk.agent, lk.mode) for lk in lm.list()) == [
        ("/a", "bob", SH), ("/b", "alice", EX), ("/b/x", "alice", SH)]


async def test_on_delete_drops_locks_below(lm):
    await lm.acquire("alice", "/d", SH)
    await lm.acquire("alice", "/d/e", EX)
    keep = await lm.acquire("alice", "/de", EX)
    lm.on_delete("/d")
    assert lm.list() == [keep]
    lm.on_delete("/nothing/here")
    assert lm.list() == [keep]


# ---- formats -----------------------------------------------------------------------------------------

def _lock(**kw) -> Lock:
    base = dict(path="/f", mode=EX, agent="researcher", session_id=None, token=42,
                acquired_ns=1_795_000_000_000_000_000, expires_ns=1_795_000_300_000_000_000)
    base.update(kw)
    return Lock(**base)


def test_format_lock_xattr():
    now = 1_795_000_013_000_000_000
    assert format_lock_xattr([_lock()], now) == (
        b"exclusive holder=researcher expires=2026-11-18T11:11:40Z ttl=287 token=42")
    two = format_lock_xattr([_lock(mode=SH, agent="b", token=3),
                             _lock(mode=SH, agent="a", token=4, session_id=9, path="/d")], now, "/f")
    assert two.split(b"\n") == [
        b"shared holder=a expires=2026-11-18T11:11:40Z ttl=287 token=4 session=9 on=/d",
        b"shared holder=b expires=2026-11-18T11:11:40Z ttl=287 token=3"]
    assert format_lock_xattr([], now) == b""


@pytest.mark.parametrize("value, expected", [
    (b"exclusive", (EX, None, False)),
    (b"shared", (SH, None, False)),
    (b"exclusive;ttl=30", (EX, 30.0, False)),
    (b" Shared ; ttl=2.5 ; force \n", (SH, 2.5, True)),
    (b"exclusive;force;ttl=1\0", (EX, 1.0, True)),
    (b"exclusive;", (EX, None, False)),
])
def test_parse_lock_xattr(value, expected):
    assert parse_lock_xattr(value) == expected


@pytest.mark.parametrize("junk", [
    b"", b";", b"locked", b"exclusive;ttl=", b"exclusive;ttl=abc", b"exclusive;ttl=0",
    b"exclusive;ttl=-5", b"exclusive;ttl=nan", b"exclusive;ttl=inf", b"shared;ttl=1;ttl=2",
    b"shared;force=1", b"shared;wait=3", b"\xff\xfe", b"exclusive shared",
])
def test_parse_lock_xattr_rejects_junk(junk):
    with pytest.raises(ValueError):
        parse_lock_xattr(junk)


def test_xattr_round_trip_through_manager_format():
    for mode in (EX, SH):
        for ttl in (None, 0.5, 30.0):
            value = mode.value + (f";ttl={ttl}" if ttl else "")
            assert parse_lock_xattr(value.encode()) == (mode, ttl, False)


def test_listing_round_trip():
    now = 1_795_000_013_000_000_000
    locks = [_lock(path="/with space/and\nnewline", session_id=5),
             _lock(path="/b\\c", mode=SH, agent="w", token=7)]
    text = format_locks_listing(locks, now)
    assert text.splitlines()[0].split() == ["MODE", "AGENT", "SESSION", "TOKEN", "EXPIRES", "TTL", "PATH"]
    rows = parse_locks_listing(text)
    assert [r["path"] for r in rows] == ["/b\\c", "/with space/and\nnewline"]
    assert rows[1] == {"path": "/with space/and\nnewline", "mode": "exclusive", "agent": "researcher",
                       "session_id": 5, "token": 42, "expires": "2026-11-18T11:11:40Z", "ttl": 287}
    assert parse_locks_listing(format_locks_listing([], now)) == []


async def test_list_locks_reads_database(lm):
    lock = await lm.acquire("alice", "/f", EX)
    await lm.acquire("bob", "/g", EX, ttl=0.01)
    await until(lambda: len(lm.list()) == 1)
    assert list_locks(lm._ws) == [lock]


def test_bad_paths_rejected():
    from agentfs.core.locks import normalize
    assert normalize("/a//b/./c/") == "/a/b/c"
    assert normalize("/") == "/"
    for bad in ("a/b", "/a/../b", ""):
        with pytest.raises(ValueError):
            normalize(bad)


async def test_conflict_costs_no_reload_when_nothing_changed(lm, monkeypatch):
    await lm.acquire("alice", "/f", EX)
    lm.conflict("bob", "/f", R)
    from agentfs.store import locks_table
    calls = []
    monkeypatch.setattr(locks_table, "load", lambda conn: calls.append(1))
    for _ in range(100):
        assert lm.conflict("bob", "/f", R) is not None
    assert calls == []


# ---- change detection ----------------------------------------------------------------------------------

async def test_manager_without_beacon_still_sees_other_daemons(make, monkeypatch):
    from agentfs.store.beacon import Beacon
    d1 = make()
    monkeypatch.setattr(Beacon, "open", classmethod(lambda cls, path: None))
    d2 = make()
    assert d2._beacon is None
    lock = await d1.acquire("alice", "/f", EX)
    assert d2.conflict("bob", "/f", R) == lock
    await d1.release("alice", "/f")
    assert d2.conflict("bob", "/f", R) is None


async def test_unpublished_write_is_seen_by_the_safety_recheck(lm, ws):
    """A writer that died between COMMIT and publishing is noticed within SAFETY_RECHECK_SECONDS."""
    from agentfs.core import locks as locks_mod
    from agentfs.store import db, locks_table
    assert lm.conflict("bob", "/f", R) is None
    conn = db.connect(ws)
    with db.immediate(conn):
        locks_table.upsert_lock(conn, ("/f", "ghost", "exclusive", None, 999, 0, 2**62))
        locks_table.bump_generation(conn)
    conn.close()
    with trio.fail_after(locks_mod.SAFETY_RECHECK_SECONDS + 2):
        while lm.conflict("bob", "/f", R) is None:
            await trio.sleep(0.02)
    assert lm.conflict("bob", "/f", R).agent == "ghost"


# ---- several processes --------------------------------------------------------------------------------

_WORKER = r"""
import sys, trio
from pathlib import Path
from agentfs.core.locks import LockManager, LockMode
from agentfs.workspace import Workspace

async def main(root, agent, rounds, counter):
    lm = LockManager(Workspace(Path(root)), lambda: {"default_ttl": 60.0, "wait_seconds": 5.0})
    tokens = []
    for _ in range(rounds):
        lock = await lm.acquire(agent, "/counter", LockMode.EXCLUSIVE, wait=60)
        tokens.append(lock.token)
        value = int(Path(counter).read_text())
        await trio.sleep(0.002)  # widen the read-modify-write window a broken lock would expose
        Path(counter).write_text(str(value + 1))
        await lm.release(agent, "/counter")
    print(" ".join(map(str, tokens)))

trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
"""


async def test_processes_increment_a_counter_under_exclusive_locks(ws, tmp_path):
    """Several processes (as several daemons would) never hold the lock at once: no lost update."""
    import sys
    counter = tmp_path / "counter"
    counter.write_text("0")
    procs, rounds = 4, 15
    outputs: list[str] = []

    async def one(i: int):
        r = await trio.run_process([sys.executable, "-c", _WORKER, str(ws.root), f"agent{i}",
                                    str(rounds), str(counter)],
                                   capture_stdout=True, capture_stderr=True, check=False)
        assert r.returncode == 0, r.stderr.decode()
        outputs.append(r.stdout.decode())

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            for i in range(procs):
                n.start_soon(one, i)
    assert int(counter.read_text()) == procs * rounds
    tokens = [int(t) for out in outputs for t in out.split()]
    assert len(tokens) == procs * rounds and len(set(tokens)) == len(tokens)
    for out in outputs:
        mine = [int(t) for t in out.split()]
        assert mine == sorted(mine)
