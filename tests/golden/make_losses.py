"""Write ``losses.json``: the loss of every update and the last evaluation of short runs at
a fixed seed (each classification method, and one captioning run), with the torch build
that computed them. ``tests/test_golden.py`` trains the same runs and compares.

    python tests/golden/make_losses.py      # rewrite it (only when the numbers must move)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TINY = dict(canvas_size=32, digit_min=10, digit_max=20, hidden=16, patch=6, context_size=8,
            glimpses=2, batch_size=8, samples=3, eval_size=20, test_size=30, eval_samples=2,
            log_every=1, eval_every=0, checkpoint_every=0, diag_every=0, threads=1, steps=12)
CAPTION = ["--num-train", "40", "--num-val", "12", "--num-test", "10", "--hidden", "16",
           "--embed", "8", "--batch-size", "6", "--samples", "3", "--eval-size", "8",
           "--log-every", "1", "--eval-every", "0", "--checkpoint-every", "0",
           "--diag-every", "0", "--threads", "1", "--steps", "6", "--encoder-steps", "20",
           "--no-progress"]
METHODS = ("var", "var+c", "wsram+c", "wsram+q+c", "vimco", "cnn")
#: why the numbers last moved, kept in the file beside them
NOTE = ("Retaken when training updates started drawing their actions from a generator of "
        "the run's own (policy.ActionNoise: uniforms through inverse CDFs) instead of the "
        "global generator's randn/multinomial, so that a stack of runs draws each run's "
        "own actions (issue #20). Same distributions, other numbers; the CNN's are unchanged.")


def _sequence(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"loss": [r["train/loss"] for r in rows if "train/loss" in r],
            "eval": {k: v for r in rows for k, v in r.items() if k.startswith("eval/")}}


def losses() -> dict:
    """Train every golden run in a temporary folder; return their sequences."""
    from wsram.cli import run as cli_run  # the command, in-process
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            run = Path(tmp) / method
            flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
            code = cli_run(["train", "--run-dir", str(run), "--method", method, *flags,
                            "--no-progress"])
            assert code == 0, method
            out[method] = _sequence(run)
        run = Path(tmp) / "caption"
        assert cli_run(["caption", "train", "--run-dir", str(run), *CAPTION]) == 0
        out["caption"] = _sequence(run)
    return out


def torch_build() -> str:
    return f"{torch.__version__} {sys.platform} {torch.backends.cpu.get_cpu_capability()}"


if __name__ == "__main__":
    data = {"torch": torch_build(), "note": NOTE, "runs": losses()}
    (HERE / "losses.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {HERE / 'losses.json'} ({data['torch']})")
