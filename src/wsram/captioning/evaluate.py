"""Evaluating caption runs: BLEU-1..4 and CIDEr of decoded captions on a split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..errors import WsramError
from ..registry import load_run
from ..run_dir import RunDir
from .bleu import corpus_bleu
from .config import CaptionConfig

CAPTIONS = "captions.json"  # every decoded caption of an evaluation, beside eval.json

SPLITS = ("val", "test")


def evaluate_caption_run(run_dir: str | Path, which: str = "last", split: str = "test",
                         beam_size: int | None = None, size: int | None = None,
                         progress: bool = False, write: bool = True) -> dict[str, Any]:
    """BLEU-1..4 and CIDEr of greedy and beam-search captions of a split; writes
    ``RUN/eval.json`` (top-level ``bleu1``..``bleu4`` and ``cider`` are beam search's)
    and ``RUN/captions.json`` (every caption with its references) unless ``write`` is
    false (then :func:`write_caption_result` does it)."""
    if split not in SPLITS:
        raise WsramError(f"--split: expected val or test, got {split!r}")
    cfg, task, model, state = load_run(run_dir, which, task="captioning", progress=progress)
    beam = cfg.beam_size if beam_size is None else beam_size
    n = len(task.split(split)) if size is None else min(size, len(task.split(split)))
    refs = task.split(split).references[:n]
    greedy = task.captions(model, split, n, 1)
    beamed = task.captions(model, split, n, beam) if beam > 1 else greedy
    scores = {"greedy": corpus_bleu(refs, greedy), "beam": corpus_bleu(refs, beamed)}
    result = {**scores["beam"], "decoding": f"beam search, width {beam}", "beam_size": beam,
              "greedy": scores["greedy"], "beam": scores["beam"], "split": split,
              "images": n, "teacher_forcing": False, "step": int(state["step"]),
              "checkpoint": RunDir(run_dir).checkpoint(which).name, "method": cfg.method}
    if which == "best":
        result["selected_on"] = (f"BLEU-4 of greedy captions of the first {cfg.eval_size} "
                                 "val images")
    rows = [{"image": i, "greedy": " ".join(g), "beam": " ".join(b),
             "references": [" ".join(r) for r in rs]}
            for i, (g, b, rs) in enumerate(zip(greedy, beamed, refs, strict=True))]
    captions = {"split": split, "checkpoint": result["checkpoint"], "captions": rows}
    if write:
        write_caption_result(result, captions, Path(run_dir))
        return result
    return {**result, "captions": captions}


def write_caption_result(result: dict[str, Any], captions: dict[str, Any],
                         run_dir: Path) -> None:
    """``RUN/eval.json`` and ``RUN/captions.json``, each written atomically."""
    run = RunDir(run_dir)
    atomic_write_json(run.eval_file(), result)
    atomic_write_json(run / CAPTIONS, captions, indent=1)


def format_result(run_dir: str | Path, res: dict[str, Any]) -> str:
    """``wsram caption evaluate``'s report of :func:`evaluate_caption_run`'s result."""
    lines = [f"{run_dir} ({res['checkpoint']}, update {res['step']}, {res['split']} "
             f"split, {res['images']} images, no teacher forcing)",
             f"  {'':<22}{'BLEU-1':>8}{'BLEU-2':>8}{'BLEU-3':>8}{'BLEU-4':>8}{'CIDEr':>8}"]
    for name, key in (("greedy", "greedy"), (f"beam {res['beam_size']}", "beam")):
        sc = res[key]
        lines.append(f"  {name:<22}" + "".join(
            f"{sc[k]:>8.3f}" for k in ("bleu1", "bleu2", "bleu3", "bleu4", "cider")))
    if "selected_on" in res:
        lines.append(f"  note: {res['checkpoint']} was selected on {res['selected_on']}")
    return "\n".join(lines)


def summary_lines(row: dict[str, Any], cfg: CaptionConfig, command: str) -> list[str]:
    """The end-of-run lines on the last evaluation during training."""
    evals = {k[5:]: v for k, v in row.items() if k.startswith("eval/")}
    at = row.get("eval_step", row["last_step"])
    scores = "  ".join(f"{k} {v:.3f}" for k, v in evals.items())
    return [f"  evaluation at update {at}, greedy captions of the first {cfg.eval_size} val "
            f"images: {scores}",
            f"    ({command} evaluate scores the test split, greedy and beam search)"]
