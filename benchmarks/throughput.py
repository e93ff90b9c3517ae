"""Training and evaluation throughput, memory and efficiency, in one command.

    python benchmarks/throughput.py [--device cpu] [--threads 1] [--seconds 3]
        [--parts train data eval] [--setups default classic cnn]

Prints a header line (torch, device, threads, CPU model), then:

train   per setup: updates/s, trajectories/s (B x K x updates/s), peak memory of the
        training process, the useful floating-point work per trajectory counted from the
        layer sizes, the FLOP/s that makes, and its ratio to the machine's large-matmul
        FLOP/s (2048 x 2048 float32) and to a large 3 x 3 convolution's, both measured in
        the same run at the same thread count.
data    canvases generated per second against canvases consumed per second by training.
eval    images/s of inference (deterministic policy, batch 256, no_grad) and of the three
        labelled test errors (M = 10 sampled trajectories plus the deterministic one).

Setups: ``default`` is wsram train's default (100 x 100 canvases, 4 glimpses of 12 x 12 at
3 scales, hidden 256, B = 64, K = 5, wsram+q+c); ``classic`` is the RAM paper's MNIST setup
(28 x 28 digits, 6 glimpses of 8 x 8 at one scale, hidden 256, location std 0.05, B = 128,
K = 1, var+c); ``cnn`` is the convolutional baseline on the default canvases (B = 64).

FLOP convention: a multiply-accumulate is 2 FLOPs; a training update costs 3 x the forward
FLOPs of the network layers (forward, and backward for inputs and weights), plus the
forward FLOPs of the sensor (resampling is not differentiated). Per trajectory: per-image
work (context network, pyramid) is divided by K. The extra no-grad rollout that `wsram
train` makes to measure the training error of q-methods is timed but not counted as useful.
Peak memory: on CPU, the growth of the peak resident set size of a fresh process that runs
one setup, over its size after imports and data loading (the peak mark is reset there
through /proc/self/clear_refs); on CUDA, max_memory_allocated.
"""

from __future__ import annotations  # noqa: I001 - wsram before torch, see below

import argparse
import multiprocessing as mp
import os
import platform
import resource
import time
from typing import Any

import wsram  # noqa: F401 - before torch, as the wsram command: its OpenMP settings
import torch

from wsram.classification.config import ClassificationConfig
from wsram.classification.cost import count_macs, images_per_second, sensor_macs
from wsram.classification.data import CanvasGenerator, CanvasSpec, load_digits
from wsram.classification.evaluate import test_errors
from wsram.classification.task import method_of, build_model, classification_metrics, test_set
from wsram.classification import make_config
from wsram.distributed import Dist
from wsram.engine import Engine

SETUPS: dict[str, dict[str, Any]] = {
    "default": dict(method="wsram+q+c", batch_size=64, samples=5),
    "classic": dict(method="var+c", canvas_size=28, digit_min=28, digit_max=28, glimpses=6,
                    patch=8, scales=[8 / 28], hidden=256, loc_std=0.05, batch_size=128,
                    samples=1),
    "cnn": dict(method="cnn", batch_size=64, samples=1),
}


# --- machine --------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(device: str) -> str:
    dev = device
    if device.startswith("cuda") and torch.cuda.is_available():
        dev += f" ({torch.cuda.get_device_name(torch.device(device))})"
    return (f"# torch {torch.__version__}, device {dev}, {torch.get_num_threads()} threads, "
            f"CPU {cpu_model()} ({os.cpu_count()} cores visible), "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
            f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', '(unset)')}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device: torch.device, seconds: float, n: int = 2048) -> float:
    """FLOP/s of repeated n x n float32 matmuls (2 n^3 FLOPs each), after one warm-up."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = a @ b
    sync(device)
    k, t0 = 0, time.perf_counter()
    while k < 2 or time.perf_counter() - t0 < seconds:
        c = a @ b
        k += 1
    sync(device)
    del c
    return k * 2 * n ** 3 / (time.perf_counter() - t0)


def conv_flops(device: torch.device, seconds: float) -> float:
    """FLOP/s of a large 3 x 3 convolution (16 x 256 x 32 x 32 -> 256 channels), counted as
    2 x MACs of the direct method: a second reference, because on some CPUs (AMD with MKL)
    the convolution kernels reach rates the sgemm does not."""
    x = torch.randn(16, 256, 32, 32, device=device)
    w = torch.randn(256, 256, 3, 3, device=device)
    torch.nn.functional.conv2d(x, w, padding=1)
    sync(device)
    k, t0 = 0, time.perf_counter()
    while k < 2 or time.perf_counter() - t0 < seconds:
        torch.nn.functional.conv2d(x, w, padding=1)
        k += 1
    sync(device)
    return k * 2 * 16 * 32 * 32 * 256 * 256 * 9 / (time.perf_counter() - t0)


def rss_bytes() -> int:
    """Current resident set size (psutil if installed, else /proc)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size: VmHWM (since the last reset), else getrusage's maximum."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


# --- training -------------------------------------------------------------------------
# Options of the training update that the command line may set for every setup.
OPTIONS: dict[str, Any] = {}


def setup_config(name: str, device: str) -> ClassificationConfig:
    return make_config(device=device, **{**SETUPS[name], **OPTIONS})


def train_flops_per_trajectory(cfg: ClassificationConfig) -> float:
    """Useful FLOPs of one trajectory in a training update (convention in the docstring)."""
    torch.manual_seed(0)
    model = build_model(cfg)
    m = method_of(cfg.method)
    H, K = cfg.canvas_size, cfg.samples
    x, y = torch.zeros(1, 1, H, H), torch.zeros(1, dtype=torch.long)
    layers = sum(count_macs(model, lambda: m.objective(
        model.rollout(x, y, K, proposal=m.proposal))).values())
    sensor = sensor_macs(model, H)
    per_image = sensor.get("context downsampling", 0) + sensor.get("glimpse pyramid", 0)
    per_traj = sensor.get("glimpse resampling", 0)
    # The CNN computes its prediction once per image and repeats it K times.
    layers_per_traj = layers / K if m.attends else layers
    return 2 * 3 * layers_per_traj + 2 * (per_image / K + per_traj)


def bench_train(name: str, device: str, threads: int, seconds: float,
                options: dict[str, Any] | None = None) -> dict[str, float]:
    """Time the work of one `wsram train` update; run in a fresh process for the memory."""
    OPTIONS.update(options or {})
    if threads:
        torch.set_num_threads(threads)
    cfg = setup_config(name, device)
    dev = torch.device(device)
    gen = CanvasGenerator(load_digits("train"), CanvasSpec(cfg.canvas_size, cfg.digit_min,
                                                           cfg.digit_max), seed=1, device=dev)
    base_rss = rss_bytes()
    was_reset = reset_peak_rss()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base_cuda = torch.cuda.memory_allocated(dev)
    torch.manual_seed(0)
    model = build_model(cfg).to(dev)
    # The update train.py runs: forward (with the training-error metric), backward, sync,
    # clip, non-finite guard, Adam.
    engine = Engine(model, method_of(cfg.method), cfg, Dist(), classification_metrics)

    def update() -> None:
        x, y = gen.sample(cfg.batch_size)
        engine.update(x, y, False)

    for _ in range(3):
        update()
    sync(dev)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        update()
        n += 1
    sync(dev)
    ups = n / (time.perf_counter() - t0)
    out = {"updates_s": ups, "traj_s": ups * cfg.batch_size * cfg.samples,
           "images_s": ups * cfg.batch_size,
           "peak_mem": peak_rss_bytes() - base_rss,
           "mem_kind": "CPU peak RSS growth" + ("" if was_reset else
                                                 " (peak not resettable: an upper bound)")}
    if dev.type == "cuda":
        out["peak_mem"] = torch.cuda.max_memory_allocated(dev) - base_cuda
        out["mem_kind"] = "CUDA max allocated"
    return out


def _child(q: Any, *args: Any) -> None:
    q.put(bench_train(*args))


def bench_train_isolated(name: str, device: str, threads: int, seconds: float) -> dict:
    """bench_train in a fresh process, so that each setup's peak memory is its own."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, name, device, threads, seconds, dict(OPTIONS)))
    p.start()
    out = q.get()
    p.join()
    return out


def bench_data(name: str, device: str, seconds: float) -> float:
    """Canvases generated per second at the setup's batch size."""
    cfg = setup_config(name, device)
    gen = CanvasGenerator(load_digits("train"), CanvasSpec(cfg.canvas_size, cfg.digit_min,
                                                           cfg.digit_max), seed=1, device=device)
    dev = torch.device(device)
    for _ in range(3):
        gen.sample(cfg.batch_size)
    sync(dev)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        gen.sample(cfg.batch_size)
        n += 1
    sync(dev)
    return n * cfg.batch_size / (time.perf_counter() - t0)


def bench_eval(name: str, device: str, seconds: float) -> tuple[float, float]:
    """Images/s of deterministic inference (batch 256) and of the three test errors."""
    cfg = setup_config(name, device)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).eval()
    x, y = test_set(cfg, 500)
    infer = images_per_second(model, x.to(device), 256, seconds)
    test_errors(model, x[:250], y[:250], samples=cfg.eval_samples)  # warm-up
    n, t0 = 0, time.perf_counter()
    while n < 1 or time.perf_counter() - t0 < seconds:
        test_errors(model, x, y, samples=cfg.eval_samples)
        n += 1
    return infer, n * len(x) / (time.perf_counter() - t0)


def _si(v: float, unit: str = "") -> str:
    for p, f in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= f:
            return f"{v / f:.3g} {p}{unit}"
    return f"{v:.3g} {unit}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = default")
    p.add_argument("--seconds", type=float, default=3.0, help="timing per measurement")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="training precision (bf16 autocast)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training rollout (compiling is not timed)")
    p.add_argument("--parts", nargs="+", default=["train", "data", "eval"],
                   choices=["train", "data", "eval"])
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    a = p.parse_args()
    OPTIONS.update(precision=a.precision, compile=a.compile)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    print(header(a.device) + f", training precision {a.precision}"
          + (", rollout compiled" if a.compile else ""), flush=True)
    trained: dict[str, dict] = {}

    if "train" in a.parts:
        peak = matmul_flops(dev, a.seconds)
        peak_conv = conv_flops(dev, a.seconds)
        print(f"\n## training (references: 2048x2048 float32 matmul {_si(peak, 'FLOP/s')}; "
              f"3x3 conv 256->256 ch. {_si(peak_conv, 'FLOP/s')})")
        print(f"{'setup':8s} {'method':10s} {'B':>4s} {'K':>2s} {'updates/s':>10s} "
              f"{'traj/s':>9s} {'peak mem':>10s} {'FLOP/traj':>11s} {'FLOP/s':>12s} "
              f"{'/matmul':>8s} {'/conv':>7s}")
        for name in a.setups:
            cfg = setup_config(name, a.device)
            r = bench_train_isolated(name, a.device, a.threads, a.seconds)
            flops = train_flops_per_trajectory(cfg)
            achieved = flops * r["traj_s"]
            trained[name] = r
            print(f"{name:8s} {cfg.method:10s} {cfg.batch_size:4d} {cfg.samples:2d} "
                  f"{r['updates_s']:10.2f} {r['traj_s']:9.0f} {r['peak_mem'] / 2**20:7.0f} MiB "
                  f"{_si(flops, 'FLOP'):>11s} {_si(achieved, 'FLOP/s'):>12s} "
                  f"{achieved / peak:8.1%} {achieved / peak_conv:7.1%}", flush=True)
        print(f"(peak mem: {r['mem_kind']}; FLOPs counted from layer sizes, see the "
              "docstring for the convention)")
        summary = []
        if "default" in trained:
            f = train_flops_per_trajectory(setup_config("default", a.device))
            summary.append(f"default setup at {f * trained['default']['traj_s'] / peak:.1%} "
                           "of the 2048x2048 matmul rate (target 50%)")
        if "classic" in trained:
            summary.append(f"classic setup {trained['classic']['traj_s']:,.0f} "
                           "trajectories/s (target 14,000)")
        if summary:
            print("targets: " + "; ".join(summary), flush=True)

    if "data" in a.parts:
        print("\n## data: canvases generated vs consumed by training")
        for name in a.setups:
            cfg = setup_config(name, a.device)
            made = bench_data(name, a.device, min(a.seconds, 2.0))
            used = trained.get(name, {}).get("images_s")
            used_s = f"{used:10.0f}/s consumed" if used else "(run --parts train for consumption)"
            share = f", generation = {used / made:.1%} of the update time" if used else ""
            print(f"{name:8s} {cfg.canvas_size}x{cfg.canvas_size} B={cfg.batch_size:<4d} "
                  f"{made:10.0f}/s generated {used_s}{share}", flush=True)

    if "eval" in a.parts:
        print("\n## evaluation (untrained weights; speed does not depend on them)")
        for name in a.setups:
            cfg = setup_config(name, a.device)
            infer, three = bench_eval(name, a.device, a.seconds)
            print(f"{name:8s} {cfg.method:10s} inference {infer:9.0f} images/s (deterministic, "
                  f"batch 256); three test errors (M={cfg.eval_samples}) {three:8.0f} images/s",
                  flush=True)


if __name__ == "__main__":
    main()
