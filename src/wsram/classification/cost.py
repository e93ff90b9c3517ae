"""`wsram cost`: what a trained model costs at inference, next to the error it buys.

For each run folder (attention or cnn): test error, multiply-accumulates (MACs) per image,
pixels read per image, and images per second on this machine. ``NOTES`` says how each is
counted; it is printed under the table.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import writable_output
from ..errors import WsramError
from ..registry import load_run
from ..run_dir import RunDir
from .data.splits import test_set
from .evaluate import evaluate_run
from .task import method_of

BATCH = 256  # images per inference batch when timing

NOTES = """\
- MACs of the network layers come from forward hooks on every Conv2d and Linear layer
  during one inference pass: a Linear layer of n inputs makes n MACs per output value, a
  Conv2d layer (in_channels / groups) x kh x kw. Activations, pooling, softmax and the
  policy's tanh/argmax are not counted (they are not multiply-accumulates).
- The attention model's sensor is counted from its sizes: the low-resolution context copy
  and each pyramid level are area averages (one MAC per source pixel of each averaging
  window), and a bilinearly resampled glimpse pixel is 4 MACs. Each glimpse pixel is read
  once, at its chosen scale (from an atlas of the pyramid levels); the pyramid averages the
  whole canvas once per scale.
- "Values read by the network": N x G x G glimpse pixels plus the context copy's pixels
  for the attention model, the whole canvas for the CNN.
- "Canvas pixels under the glimpses": distinct canvas pixels whose centre lies in some
  glimpse box, averaged over the test canvases, deterministic policy.
- "Incl. context image": canvas pixels that reach the network at all. The context copy
  averages every pixel of the canvas (and so does the pyramid as implemented), so for the
  attention model this is the whole canvas, as for the CNN.
- Images/s: deterministic policy, torch.no_grad, batches of test canvases, after 2
  warm-up batches, on this machine at the given thread count."""


# --- counting -------------------------------------------------------------------------
def count_macs(model: nn.Module, fn: Callable[[], Any]) -> dict[str, int]:
    """MACs of every ``nn.Conv2d`` / ``nn.Linear`` call made while ``fn()`` runs, summed by
    top-level child name of ``model`` (a module called N times counts N times)."""
    counts: dict[str, int] = {}

    def hook(name: str) -> Callable[..., None]:
        def count(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
            if isinstance(m, nn.Conv2d):
                per_out = (m.in_channels // m.groups) * math.prod(m.kernel_size)
            else:
                per_out = m.in_features
            counts[name] = counts.get(name, 0) + out.numel() * per_out
        return count

    handles = [m.register_forward_hook(hook(name.split(".")[0]))
               for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return counts


def area_macs(size_in: int, size_out: int) -> int:
    """MACs of ``F.interpolate(mode="area")`` from size_in^2 to size_out^2, one channel: one
    per source pixel of each output's averaging window (adaptive average pooling)."""
    if size_out >= size_in:
        return 0
    per_axis = sum(math.ceil((i + 1) * size_in / size_out) - (i * size_in) // size_out
                   for i in range(size_out))
    return per_axis * per_axis


def sensor_macs(model: nn.Module, canvas_size: int, channels: int = 1) -> dict[str, int]:
    """MACs per image of the attention model's non-learned image operations (empty for the
    CNN): context downsampling, the pyramid, bilinear resampling of the glimpses."""
    if getattr(model, "glimpses", 0) == 0:
        return {}
    sensor = model.sensor
    G = sensor.patch
    return {
        "context downsampling": channels * area_macs(canvas_size, model.context_size),
        "glimpse pyramid": channels * sum(area_macs(canvas_size, s) for s in sensor.level_sizes),
        "glimpse resampling": channels * model.glimpses * G * G * 4,
    }


def inference_macs(model: nn.Module, canvas_size: int, channels: int = 1) -> dict[str, int]:
    """MACs per image at inference (deterministic policy, no label), by part."""
    x = torch.zeros(1, channels, canvas_size, canvas_size,
                    device=next(model.parameters()).device)
    with torch.no_grad():
        layers = count_macs(model, lambda: model.rollout(x, deterministic=True))
    return {**layers, **sensor_macs(model, canvas_size, channels)}


def input_values(model: nn.Module, canvas_size: int, channels: int = 1) -> int:
    """Values the network itself reads per image."""
    if getattr(model, "glimpses", 0) == 0:
        return channels * canvas_size ** 2
    G = model.sensor.patch
    return channels * (model.glimpses * G * G + model.context_size ** 2)


@torch.no_grad()
def glimpse_pixels(model: nn.Module, x: Tensor, chunk: int = 250) -> float:
    """Mean number of distinct canvas pixels whose centre lies in a glimpse box, with the
    deterministic policy, over the canvases x (N, C, H, W); the canvas area for the CNN."""
    H = x.shape[-1]
    if getattr(model, "glimpses", 0) == 0:
        return float(H * H)
    centres = torch.arange(H, dtype=torch.float32) + 0.5  # (H,)
    total = 0.0
    for i in range(0, len(x), chunk):
        r = model.rollout(x[i:i + chunk], deterministic=True)
        box = model.sensor.boxes(r.locs[:, 0], r.scales[:, 0]).cpu()  # (n, N, 4)
        in_x = (centres >= box[..., 0:1]) & (centres < box[..., 2:3])  # (n, N, H)
        in_y = (centres >= box[..., 1:2]) & (centres < box[..., 3:4])  # (n, N, H)
        covered = (in_y[..., :, None] & in_x[..., None, :]).any(1)  # (n, H, H)
        total += covered.sum().item()
    return total / len(x)


@torch.no_grad()
def images_per_second(model: nn.Module, x: Tensor, batch_size: int = BATCH,
                      seconds: float = 2.0) -> float:
    """Inference throughput on x's device: deterministic policy, batches of ``batch_size``
    (x is repeated to fill one), after two warm-up batches, for about ``seconds``."""
    if len(x) < batch_size:
        x = x.repeat(math.ceil(batch_size / len(x)), 1, 1, 1)
    xb = x[:batch_size]
    sync = torch.cuda.synchronize if xb.device.type == "cuda" else (lambda: None)
    for _ in range(2):
        model.rollout(xb, deterministic=True)
    sync()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        model.rollout(xb, deterministic=True)
        n += 1
    sync()
    return n * batch_size / (time.perf_counter() - t0)


# --- one run --------------------------------------------------------------------------
def _test_errors(run_dir: Path, which: str, step: int) -> dict[str, Any]:
    """RUN/eval.json when it is of this checkpoint, else a fresh evaluation (rewrites it)."""
    run = RunDir(run_dir)
    try:
        ev = json.loads(run.eval_file().read_text())
        if ev.get("checkpoint") == run.checkpoint(which).name and ev.get("step") == step:
            return ev
    except (OSError, ValueError, AttributeError):
        pass
    return evaluate_run(run_dir, which)


def run_cost(run_dir: str | Path, which: str = "last", device: str = "cpu",
             seconds: float = 2.0, batch_size: int = BATCH) -> dict[str, Any]:
    """Error, MACs, pixels and inference speed of one run folder's checkpoint."""
    run_dir = Path(run_dir)
    cfg, _, model, state = load_run(run_dir, which, task="classification")
    ev = _test_errors(run_dir, which, int(state["step"]))
    x, _ = test_set(cfg)
    H = cfg.canvas_size
    C = cfg.channels
    macs = inference_macs(model, H, C)
    sensor = sensor_macs(model, H, C)
    model.to(device)
    speed = images_per_second(model, x.to(device), batch_size, seconds)
    return {
        "run": str(run_dir), "method": cfg.method, "label": method_of(cfg.method).label,
        "checkpoint": RunDir(run_dir).checkpoint(which).name, "step": int(state["step"]),
        **{k: ev[k] for k in ("test_error_deterministic", "test_error_mc",
                              "test_error_sampled", "samples", "test_images")},
        "macs": sum(macs.values()), "macs_sensor": sum(sensor.values()), "macs_by_part": macs,
        "glimpses": model.glimpses, "canvas_pixels": H * H,
        "input_values": input_values(model, H, C),
        "pixels_glimpses": glimpse_pixels(model.cpu(), x),
        "pixels_with_context": H * H,
        "images_per_s": speed, "batch_size": batch_size, "device": device,
        "threads": torch.get_num_threads(),
    }


# --- tables ---------------------------------------------------------------------------
def _si(v: float) -> str:
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= f:
            return f"{v / f:.3g} {unit}"
    return f"{v:.3g}"


def _rows(costs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    def px(c: dict[str, Any], key: str) -> str:
        return f"{c[key]:,.0f} ({c[key] / c['canvas_pixels']:.0%})"

    m = costs[0]["samples"]
    return [
        ("method", [c["label"] for c in costs]),
        ("checkpoint", [f"{c['checkpoint']}, update {c['step']}" for c in costs]),
        ("test error, deterministic policy", [f"{c['test_error_deterministic']:.2%}"
                                              for c in costs]),
        (f"test error, mean of {m} trajectories", [f"{c['test_error_mc']:.2%}" for c in costs]),
        ("test images", [str(c["test_images"]) for c in costs]),
        ("MACs per image", [_si(c["macs"]) for c in costs]),
        ("  of which image resampling (sensor, context)", [_si(c["macs_sensor"]) for c in costs]),
        ("glimpses", [str(c["glimpses"]) for c in costs]),
        ("values read by the network", [f"{c['input_values']:,}" for c in costs]),
        ("canvas pixels under the glimpses", [px(c, "pixels_glimpses") for c in costs]),
        ("canvas pixels incl. context image", [px(c, "pixels_with_context") for c in costs]),
        (f"images/s ({costs[0]['device']}, batch {costs[0]['batch_size']}, "
         f"{costs[0]['threads']} thread(s))", [f"{c['images_per_s']:,.0f}" for c in costs]),
    ]


def text_table(costs: list[dict[str, Any]]) -> str:
    """The runs side by side, one column each, aligned for a terminal."""
    rows = [("", [c["run"] for c in costs])] + _rows(costs)
    w0 = max(len(r[0]) for r in rows)
    widths = [max(len(r[1][i]) for r in rows) for i in range(len(costs))]
    return "\n".join(
        "  ".join([label.ljust(w0)] + [v.rjust(w) for v, w in zip(vals, widths, strict=True)])
        for label, vals in rows)


def markdown(costs: list[dict[str, Any]]) -> str:
    """A stand-alone markdown document: the table, the machine, and how things count."""
    names = [Path(c["run"]).name or c["run"] for c in costs]
    lines = ["# Inference cost", "",
             f"torch {torch.__version__}, {costs[0]['device']}, {costs[0]['threads']} thread(s). "
             "Runs: " + ", ".join(f"`{c['run']}`" for c in costs) + ".", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(costs)]
    lines += [f"| {label.strip()} | " + " | ".join(vals) + " |" for label, vals in _rows(costs)]
    lines += ["", "How it is counted:", "", NOTES, ""]
    return "\n".join(lines)


def check_out_path(out: str | Path) -> Path:
    return writable_output(out, (".md", ".markdown", ".txt"))


def check_device(device: str) -> str:
    """A device name this machine has, or a one-line error."""
    if re.fullmatch(r"cpu|cuda(:\d+)?", device) is None:
        raise WsramError(f"--device: expected cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WsramError(f"--device {device}: CUDA is not available on this machine")
    return device


def cost_command(run_dirs: list[str], which: str = "last", device: str = "cpu",
                 threads: int = 0, seconds: float = 2.0, out: str | None = None,
                 as_json: bool = False) -> list[dict[str, Any]]:
    """``wsram cost``: measure each run, print the table (or JSON), optionally write it."""
    if threads < 0 or not seconds > 0:
        raise WsramError("cost: --threads must be >= 0 and --seconds > 0")
    check_device(device)
    path = check_out_path(out) if out else None
    if threads:
        torch.set_num_threads(threads)
    costs = [run_cost(r, which, device, seconds) for r in run_dirs]
    if as_json:
        print(json.dumps(costs, indent=2))
    else:
        print(text_table(costs))
        print()
        print(NOTES)
    if path is not None:
        try:
            path.write_text(markdown(costs))
        except OSError as e:
            raise WsramError(f"{path}: cannot write ({e.strerror})") from None
        print(f"wrote {path}", file=sys.stderr if as_json else sys.stdout)
    return costs
