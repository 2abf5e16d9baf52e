#!/usr/bin/env python3
"""Cost of policy checks on the FUSE hot path: µs per rights()/visible() call.

A policy of 50 agents x 20 rules (literal subtrees, `*` and `**` globs,
deny rules) is asked about a few thousand realistic paths, cold (fresh
Policy, every call computes) and memoised (the same calls again).

    python scripts/bench_policy.py [--agents 50] [--rules 20] [--paths 4000]
"""

from __future__ import annotations

import argparse
import random
import time

from agentfs.core.policy import Policy


def make_policy(n_agents: int, n_rules: int, rng: random.Random) -> str:
    out = ['[workspace]\ndefault_agent = "nobody"\n']
    for a in range(n_agents):
        rules = []
        for r in range(n_rules):
            kind = r % 5
            if kind == 0:
                glob = f"/team{a}/proj{r}/**"
            elif kind == 1:
                glob = f"/shared/*/notes{r}/**"
            elif kind == 2:
                glob = f"/data/**/*.{['csv', 'md', 'json'][r % 3]}"
            elif kind == 3:
                glob = f"/team{rng.randrange(n_agents)}/proj{r}/file{r}.txt"
            else:
                glob = f"/team{a}/proj{r - 1}/secret/**"
            verb = "deny" if kind == 4 else "allow"
            letters = "rwcdl" if kind == 0 else ("r" if verb == "allow" else "rwcdl")
            rules.append(f'  {{ path = "{glob}", {verb} = "{letters}" }},')
        out.append(f"[agents.agent{a}]\nuids = [{10000 + a}]\nrules = [\n" + "\n".join(rules) + "\n]\n")
    return "\n".join(out)


def make_paths(n: int, n_agents: int, n_rules: int, rng: random.Random) -> list[str]:
    paths = []
    for _ in range(n):
        depth = rng.randrange(1, 6)
        top = rng.choice(["team", "shared", "data", "other"])
        parts = [f"{top}{rng.randrange(n_agents)}" if top == "team" else top]
        parts += [rng.choice([f"proj{rng.randrange(n_rules)}", f"notes{rng.randrange(n_rules)}",
                              "secret", "x", "file.md", "t.csv"]) for _ in range(depth)]
        paths.append("/" + "/".join(parts))
    return paths


def timed(fn, calls: list[tuple[str, str]]) -> float:
    t0 = time.perf_counter()
    for agent, path in calls:
        fn(agent, path)
    return (time.perf_counter() - t0) / len(calls) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--rules", type=int, default=20)
    ap.add_argument("--paths", type=int, default=4000)
    args = ap.parse_args()
    rng = random.Random(7)
    text = make_policy(args.agents, args.rules, rng)
    t0 = time.perf_counter()
    Policy.from_text(text)
    load_ms = (time.perf_counter() - t0) * 1e3
    paths = make_paths(args.paths, args.agents, args.rules, rng)
    calls = [(f"agent{rng.randrange(args.agents)}", p) for p in paths]
    print(f"policy: {args.agents} agents x {args.rules} rules; load+validate {load_ms:.1f} ms")
    for name in ("rights", "visible"):
        pol = Policy.from_text(text)
        fn = getattr(pol, name)
        cold = timed(fn, calls)
        warm = timed(fn, calls)
        print(f"{name:8s} cold {cold:6.2f} µs/call   memoised {warm:5.2f} µs/call")
    pol = Policy.from_text(text)
    uni_cold = timed(lambda _a, p: pol.uniform(p), calls)
    uni_warm = timed(lambda _a, p: pol.uniform(p), calls)
    print(f"uniform  cold {uni_cold:6.1f} µs/call   memoised {uni_warm:5.2f} µs/call  (all {args.agents + 1} agents)")
    granted = sum(1 for a, p in calls if int(pol.rights(a, p)))
    print(f"({granted}/{len(calls)} calls granted some right)")
    bench_identity(text)


def bench_identity(policy_text: str) -> None:
    """µs per IdentityResolver.resolve() for a repeat caller (the open/lookup path)."""
    import os
    import tempfile

    from agentfs.core.identity import IdentityResolver
    from agentfs.core.policy import PolicyHolder
    from agentfs.workspace import init_workspace

    with tempfile.TemporaryDirectory() as d:
        ws = init_workspace(os.path.join(d, "ws"), policy_text)
        for label, cap in (("pidfd probe", None), ("/proc re-read", 0)):
            r = IdentityResolver(PolicyHolder(ws.policy_path), ws, max_pidfds=cap)
            t0 = time.perf_counter()
            r.resolve(10003, 0, os.getpid())
            first = (time.perf_counter() - t0) * 1e6
            n = 20000
            t0 = time.perf_counter()
            for _ in range(n):
                r.resolve(10003, 0, os.getpid())
            hit = (time.perf_counter() - t0) / n * 1e6
            r.close()
            print(f"resolve  first {first:6.0f} µs        repeat caller {hit:5.2f} µs/call  ({label})")


if __name__ == "__main__":
    main()
