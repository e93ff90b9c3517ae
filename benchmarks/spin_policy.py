"""Which OpenMP idle policy to default to: quiet speed and shared-machine speed, both,
measured in interleaved rounds so that a drift of the machine's load hits every candidate
alike.

    python benchmarks/spin_policy.py [--rounds 6] [--seconds 3]
        [--candidates spin1000 spin30000 spin300000 passive]

Every candidate is a set of environment variables given to fresh ``python`` processes
that import ``wsram`` first (as the ``wsram`` command does: a variable set by the user wins
over wsram's default). Per candidate, warmed-up training processes (those of
``benchmarks/shared_machine.py``) wait for their turn: one per quiet figure (the classic
and default setups of ``benchmarks/throughput.py``, at 1 and 2 threads) and two for the
shared-machine figure (the default setup at 2 threads, torch's default on 2 cores).

Each round visits the candidates in a new random order; per candidate it times every
quiet figure alone for ``--seconds``, then one shared-machine pair: one training alone,
then two at once (each one's updates/s over the lone one's). Reported per candidate and
figure: the median over rounds, and for quiet speed the median over rounds of the ratio
to the best candidate of that round (paired by round) with a distribution-free interval
for that median (order statistics; the coverage is printed). Idle processes of the other
candidates sleep on a pipe read; with an ``OMP_WAIT_POLICY=ACTIVE`` candidate they would
spin, so there is none.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CANDIDATES = {
    "spin1000": {"GOMP_SPINCOUNT": "1000"},  # wsram's default before this measurement
    "spin10000": {"GOMP_SPINCOUNT": "10000"},
    "spin30000": {"GOMP_SPINCOUNT": "30000"},
    "spin100000": {"GOMP_SPINCOUNT": "100000"},
    "spin300000": {"GOMP_SPINCOUNT": "300000"},  # libgomp's own default
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},  # sleep at once
}
QUIET = [("classic", 1), ("classic", 2), ("default", 1), ("default", 2)]


class Child:
    """One warmed-up training process (``shared_machine.py --child``)."""

    def __init__(self, setup: str, threads: int, env: dict[str, str]):
        cmd = [sys.executable, str(HERE / "shared_machine.py"), "--child", "--setup", setup,
               "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=HERE)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"a training process ({setup}, {threads} threads) failed to start")

    def start(self, seconds: float) -> None:
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()

    def result(self) -> float:
        return json.loads(self.proc.stdout.readline())["updates_s"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent / "src"),
                                                      env.get("PYTHONPATH")]))
    return env


def median_interval(xs: list[float]) -> tuple[float, float, float, float]:
    """Median, a distribution-free interval for it (order statistics: the widest k with
    P(Binomial(n, 1/2) <= k) <= 2.5%, at least the extremes) and that interval's coverage."""
    s, n = sorted(xs), len(xs)
    k = 0
    while sum(math.comb(n, i) for i in range(k + 2)) / 2 ** n <= 0.025:
        k += 1
    coverage = 1 - 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return statistics.median(s), s[k], s[n - 1 - k], coverage


def one_round(kids: dict, order: list[str], seconds: float) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in order:
        figs = {}
        for key in QUIET:
            kids[name][key].start(seconds)
            figs[f"{key[0]} {key[1]}t"] = kids[name][key].result()
        a, b = kids[name]["pair"]
        a.start(seconds)
        solo = a.result()
        a.start(seconds)
        b.start(seconds)
        figs["shared"] = statistics.mean([a.result() / solo, b.result() / solo])
        out[name] = figs
    return out


def report(rounds: list[dict[str, dict[str, float]]], names: list[str]) -> None:
    keys = [f"{s} {t}t" for s, t in QUIET]
    print("\n| candidate | " + " | ".join(f"{k}: upd/s, x best [interval]" for k in keys)
          + " | shared: share of solo speed, median [interval] |")
    print("|---" * (len(keys) + 2) + "|")
    cov = 0.0
    for name in names:
        cells = []
        for k in keys:
            ratio = [r[name][k] / max(r[c][k] for c in names) for r in rounds]
            speed = statistics.median(r[name][k] for r in rounds)
            m, lo, hi, cov = median_interval(ratio)
            cells.append(f"{speed:.1f}, {m:.3f} [{lo:.3f}, {hi:.3f}]")
        m, lo, hi, cov = median_interval([r[name]["shared"] for r in rounds])
        cells.append(f"{m:.0%} [{lo:.0%}, {hi:.0%}]")
        print(f"| {name} ({' '.join(f'{k}={v}' for k, v in CANDIDATES[name].items())}) | "
              + " | ".join(cells) + " |")
    print(f"\nIntervals: order statistics of {len(rounds)} rounds, coverage {cov:.1%}.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--seed", type=int, default=0, help="of the visiting order")
    a = p.parse_args()
    print(f"# {os.cpu_count()} cores visible; {a.rounds} rounds of {a.seconds:g} s per "
          f"figure; candidates {', '.join(a.candidates)}", flush=True)
    kids: dict = {}
    try:
        for name in a.candidates:
            env = environment(CANDIDATES[name])
            kids[name] = {key: Child(*key, env) for key in QUIET}
            kids[name]["pair"] = (Child("default", 2, env), Child("default", 2, env))
        rng, rounds = random.Random(a.seed), []
        for r in range(a.rounds):
            order = rng.sample(a.candidates, len(a.candidates))
            rounds.append(one_round(kids, order, a.seconds))
            print(f"round {r + 1}: " + "; ".join(
                f"{n} " + " ".join(f"{v:.2f}" for v in rounds[-1][n].values())
                for n in a.candidates), flush=True)
    finally:
        for d in kids.values():
            for c in [*(d[k] for k in QUIET if k in d), *d.get("pair", ())]:
                c.close()
    report(rounds, a.candidates)


if __name__ == "__main__":
    main()
