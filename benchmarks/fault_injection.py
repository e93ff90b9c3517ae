"""Fault injection: end a small training run N times at random updates, by SIGINT,
SIGTERM, SIGHUP, a closed stderr pipe and SIGKILL in turn, resume it after each, and
compare the result with the same run never stopped.

Counts, printed at the end:
  faults   - processes ended by a fault while training;
  resumed  - of those, runs that `--resume` continued from the update last.pt held;
  lost     - updates a graceful stop (every fault but SIGKILL) had logged to metrics.jsonl
             but not saved in last.pt (the promise: 0);
  redone   - updates after SIGKILL's last checkpoint, trained again on resume (SIGKILL
             cannot be caught; --checkpoint-every bounds them);
and whether the final weights and metrics.jsonl equal the uninterrupted run's.

    python benchmarks/fault_injection.py --faults 20 [--steps 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TINY = dict(canvas_size=32, digit_min=10, digit_max=20, hidden=16, patch=6, context_size=8,
            glimpses=2, batch_size=8, samples=3, eval_size=20, test_size=30, eval_samples=2,
            log_every=1, eval_every=25, diag_every=0, method="wsram+q+c", threads=1)
KINDS = ("SIGINT", "SIGTERM", "pipe", "SIGHUP", "SIGKILL")


def rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def logged(run: Path) -> int:
    return max((r["step"] for r in rows(run)), default=0)


def saved(run: Path) -> int:
    path = run / "last.pt"
    return int(torch.load(path, weights_only=True)["step"]) if path.is_file() else 0


def command(run: Path, steps: int, resume: bool, progress: bool, every: int) -> list[str]:
    cmd = [sys.executable, "-m", "wsram", "train", "--run-dir", str(run), "--steps", str(steps)]
    if resume:
        cmd.append("--resume")
    else:
        cmd += [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
        cmd.append(f"--checkpoint-every={every}")
    return cmd if progress else cmd + ["--no-progress"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", type=int, default=20, metavar="N")
    ap.add_argument("--steps", type=int, default=400, metavar="N", help="updates of the run")
    ap.add_argument("--checkpoint-every", type=int, default=5, metavar="N")
    ap.add_argument("--seed", type=int, default=0, metavar="N", help="picks the updates")
    args = ap.parse_args()
    if args.faults > args.steps // 4:
        ap.error("give at least 4 updates per fault (--steps)")
    rng = random.Random(args.seed)
    # distinct updates, sorted, at least 3 apart, leaving room at the end
    targets = sorted(rng.sample(range(2, args.steps - 10, 3), args.faults))
    work = Path(tempfile.mkdtemp(prefix="wsram-faults-"))
    ref, run = work / "ref", work / "run"
    try:
        subprocess.run(command(ref, args.steps, False, False, args.checkpoint_every),
                       check=True, capture_output=True)
        faults = resumed = lost = redone = 0
        for i, target in enumerate(targets):
            kind = KINDS[i % len(KINDS)]
            before = saved(run)
            resuming = i > 0
            pipe = kind == "pipe"
            proc = subprocess.Popen(
                command(run, args.steps, resuming, pipe, args.checkpoint_every),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE if pipe else subprocess.DEVNULL)
            target = max(target, logged(run) + 1)
            while logged(run) < target and proc.poll() is None:
                time.sleep(0.002)
            first = min((r["step"] for r in rows(run) if r["step"] > before), default=None)
            if resuming and first == before + 1:
                resumed += 1  # it went on from the update last.pt held
            if proc.poll() is not None:
                print(f"fault {i + 1}: the run ended before update {target}; stopping")
                break
            if pipe:
                proc.stderr.close()
            else:
                proc.send_signal(getattr(signal, kind))
            code = proc.wait()
            faults += 1
            seen, kept = logged(run), saved(run)
            if kind == "SIGKILL":
                redone += seen - kept
            else:
                lost += max(0, seen - kept)
            print(f"fault {i + 1:>3}: {kind:<8} at update {seen:>4}: exit {code}, last.pt "
                  f"holds {kept}", flush=True)
        final = subprocess.run(command(run, args.steps, True, False, args.checkpoint_every),
                               capture_output=True, text=True)
        if faults and final.returncode == 0 and logged(run) == args.steps:
            resumed += 1  # the last fault's resume, run to the end
        a = torch.load(ref / "last.pt", weights_only=True)["model"]
        b = torch.load(run / "last.pt", weights_only=True)["model"]
        strip = [[{k: v for k, v in r.items() if k != "time"} for r in rows(d)]
                 for d in (ref, run)]
        same = all(torch.equal(a[k], b[k]) for k in a) and strip[0] == strip[1]
        print(f"{faults} faults, {resumed} resumed, {lost} updates lost "
              f"({redone} redone after SIGKILL, checkpoint every {args.checkpoint_every}); "
              f"weights and metrics.jsonl equal to an uninterrupted run's: "
              f"{'yes' if same else 'NO'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
