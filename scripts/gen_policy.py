#!/usr/bin/env python3
"""Write a large policy (N agents x M rules) for measuring what the policy costs.

The benchmark's own Unix user (root by default) is the agent `bench`, which
has M rules too, one of them full rights on everything, so every workload
still runs; the other agents' rules (literal subtrees, `*` and `**` globs,
deny rules) never match the benchmark's `/bench` tree but are evaluated all
the same. Use with `scripts/bench.py --variant policy50x20=FILE`.

By default only `bench` may see `/bench`, so agents see it differently and
the mount must give those entries zero cache time (DESIGN.md): that is the
realistic cost. `--uniform` gives every agent full rights on `/bench/**`,
isolating the cost of evaluating the rules from the cost of not caching.

    python scripts/gen_policy.py --agents 50 --rules 20 -o /tmp/policy50x20.toml
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def rule(a: int, r: int, n_agents: int) -> str:
    kind = r % 5
    if kind == 0:
        return f'{{ path = "/team{a}/proj{r}/**", allow = "rwcdl" }}'
    if kind == 1:
        return f'{{ path = "/shared/*/notes{r}/**", allow = "r" }}'
    if kind == 2:
        return f'{{ path = "/data/**/*.{("csv", "md", "json")[r % 3]}", allow = "r" }}'
    if kind == 3:
        return f'{{ path = "/team{(a * 7 + r) % n_agents}/proj{r}/file{r}.txt", allow = "r" }}'
    return f'{{ path = "/team{a}/proj{r - 1}/secret/**", deny = "rwcdl" }}'


def policy(n_agents: int, n_rules: int, bench_uid: int, uniform: bool) -> str:
    out = ['[workspace]\ndefault_agent = "nobody"\n']
    for a in range(n_agents):
        rules = [rule(a, r, n_agents) for r in range(n_rules - (1 if uniform else 0))]
        if uniform:
            rules.append('{ path = "/bench/**", allow = "rwcdl" }')
        body = ",\n  ".join(rules)
        out.append(f"[agents.agent{a}]\nuids = [{20000 + a}]\nrules = [\n  {body},\n]\n")
    bench_rules = [rule(n_agents, r, n_agents) for r in range(n_rules - 1)]
    bench_rules.append('{ path = "/**", allow = "rwcdl" }')
    body = ",\n  ".join(bench_rules)
    out.append(f"[agents.bench]\nuids = [{bench_uid}]\nrules = [\n  {body},\n]\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=50, help="agents besides `bench` (default 50)")
    ap.add_argument("--rules", type=int, default=20, help="rules per agent (default 20)")
    ap.add_argument("--uid", type=int, default=os.getuid(), help="Unix uid of the `bench` agent (default: yours)")
    ap.add_argument("--uniform", action="store_true", help="every agent has full rights on /bench/**")
    ap.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    a = ap.parse_args(argv)
    if a.agents < 1 or a.rules < 1:
        ap.error("--agents and --rules must be at least 1")
    text = policy(a.agents, a.rules, a.uid, a.uniform)
    if a.output:
        a.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
