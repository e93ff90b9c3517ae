"""Test error, the three ways METHOD.md (Metrics) names, each labelled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import atomic_write_json
from ..registry import load_run
from ..run_dir import RunDir
from .config import ClassificationConfig
from .data.splits import eval_count, eval_split, noun, test_set
from .model import AttentionModel

EVAL_SEED = 20151207  # evaluation draws its own random stream, apart from training's


@torch.no_grad()
def test_errors(
    model: AttentionModel, x: Tensor, y: Tensor, samples: int = 10, batch_size: int = 250,
    wrong_out: dict[str, list[int]] | None = None,
) -> dict[str, float]:
    """Error rates on (x, y), (N, C, H, W) and (N,):

    test_error_sampled:       one trajectory sampled from the policy per image;
    test_error_mc:            class probabilities averaged over ``samples`` trajectories;
    test_error_deterministic: the policy's mode (location mean, likeliest scale).

    ``wrong_out``, if given, receives the indices of the images each way got wrong (for
    tests paired on the same images, e.g. McNemar's).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    wrong = {"sampled": 0, "mc": 0, "deterministic": 0}
    where: dict[str, list[int]] = {k: [] for k in wrong}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(EVAL_SEED)
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            yb = y[i:i + batch_size].to(device)
            mc = model.rollout(xb, num_samples=samples).class_log_probs  # (B, M, C)
            det = model.rollout(xb, deterministic=True).class_log_probs[:, 0]
            for k, pred in (("sampled", mc[:, 0]), ("mc", mc.exp().mean(1)),
                            ("deterministic", det)):
                miss = pred.argmax(-1) != yb
                wrong[k] += miss.sum().item()
                if wrong_out is not None:
                    where[k] += (miss.nonzero().flatten().cpu() + i).tolist()
    model.train(was_training)
    if wrong_out is not None:
        wrong_out.update(where)
    return {f"test_error_{k}": v / len(x) for k, v in wrong.items()}


def evaluate_run(run_dir: str | Path, which: str = "last", samples: int | None = None,
                 test_size: int | None = None, out: str | Path | None = None,
                 write: bool = True) -> dict[str, float]:
    """Evaluate a run folder's checkpoint on its full test set; write ``eval.json`` (or
    ``out``) unless ``write`` is false (then :func:`write_result` does it)."""
    cfg, _, model, state = load_run(run_dir, which, task="classification")
    # A run trained on a GPU is evaluated on the CPU where there is none.
    model.to(cfg.device if cfg.device == "cpu" or torch.cuda.is_available() else "cpu")
    x, y = test_set(cfg, test_size)
    m = samples if samples is not None else cfg.eval_samples
    wrong: dict[str, list[int]] = {}
    result = {
        **test_errors(model, x, y, samples=m, wrong_out=wrong),
        "samples": m,
        "test_images": len(x),
        "step": int(state["step"]),
        "checkpoint": RunDir(run_dir).checkpoint(which).name,
        "attends": cfg.attends,
    }
    if which == "best":
        # best.pt was picked by the periodic evaluations: on the validation set, or, for
        # runs saved before it existed, on the first eval_size test canvases (then its
        # test error on a set holding them is optimistic).
        n = eval_count(cfg)
        result["selected_on"] = (f"{n} validation canvases" if cfg.holdout_every else
                                 f"the first {n} test canvases")
    result["wrong"] = wrong  # the test images each way got wrong, by index
    if write:
        write_result(result, Path(out) if out is not None else RunDir(run_dir).eval_file())
    return result


def write_result(result: dict, path: Path) -> None:
    """Write an evaluation result as JSON (atomically)."""
    atomic_write_json(path, result)


def format_result(run_dir: str | Path, res: dict) -> str:
    """``wsram evaluate``'s report of :func:`evaluate_run`'s result."""
    head = (f"{run_dir} ({res['checkpoint']}, update {res['step']}, "
            f"{res['test_images']} test images)")
    if res.get("attends") is False:  # the three ways are one for a CNN
        lines = [head, f"  test_error                {res['test_error_mc']:7.2%}  ({CNN_WAY})"]
    else:
        lines = [head, *_three_ways(res)]
    if "selected_on" in res:
        optimistic = ", so these errors are optimistic" if "test" in res["selected_on"] else ""
        lines.append(f"  note: {res['checkpoint']} was selected on {res['selected_on']}"
                     f"{optimistic}")
    return "\n".join(lines)


#: how the CNN baseline classifies: no policy, no trajectories
CNN_WAY = "the CNN: one pass over the whole canvas"


def _three_ways(res: dict) -> list[str]:
    return [f"  test_error_sampled        {res['test_error_sampled']:7.2%}  (one sampled "
             "trajectory)",
             f"  test_error_mc             {res['test_error_mc']:7.2%}  (mean of "
             f"{res['samples']} trajectories)",
             f"  test_error_deterministic  {res['test_error_deterministic']:7.2%}  "
             "(deterministic policy)"]


#: what each figure is (``val_error_mc`` during training is the same measurement as
#: ``wsram evaluate``'s ``test_error_mc``, on other canvases)
_KINDS = {"sampled": "one sampled trajectory", "mc": "mean of {m} trajectories",
          "deterministic": "deterministic policy"}


def summary_lines(row: dict[str, Any], cfg: ClassificationConfig, command: str) -> list[str]:
    """The end-of-run lines on the last evaluation during training."""
    evals = {k[5:]: v for k, v in row.items() if k.startswith("eval/")}
    at = row.get("eval_step", row["last_step"])
    n = eval_count(cfg)
    where = (f"{n} validation canvases (every {cfg.holdout_every}th training {noun(cfg)}, "
             "held out)" if cfg.holdout_every else f"the first {n} test canvases")
    lines = [f"  evaluation at update {at}, on {where}:"]
    if not cfg.attends:  # the CNN: one figure, not three ways of one policy
        err = f"{eval_split(cfg)}_error"
        evals = {err: evals[f"{err}_mc"],
                 **{k: v for k, v in evals.items() if not k.startswith(f"{err}_")}}
    for k, v in evals.items():
        what = CNN_WAY if not cfg.attends and k.endswith("_error") else \
            _KINDS.get(k.rsplit("_", 1)[-1], "").format(m=cfg.eval_samples)
        lines.append(f"    {k:<26} {v:7.2%}  ({what})" if what else f"    {k:<26} {v:.4g}")
    what = "the same three on the whole test set and names them test_error_*" if cfg.attends \
        else "the same on the whole test set and names it test_error"
    lines.append(f"    ({command} evaluate measures {what})")
    return lines
