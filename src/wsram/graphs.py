"""CUDA graphs of the update (issue #20): the device part of a stacked update
(:meth:`wsram.stack.StackEngine.device_step`: forward, backward, clipping, the non-finite
guard, the Adam steps) recorded once per shape and replayed, so that its few hundred small
kernels are launched as one.

:class:`GraphedStep` wraps a function of tensors that reads no number back to the host.
Per signature of its arguments (every tensor's shape, dtype and device; every other
value), it runs the function eagerly ``warmup`` times (on a side stream, as PyTorch asks
before a capture: lazy initialisations, the optimiser's moments), then captures it into
static input buffers and replays the graph from then on: each call copies its arguments
into the buffers, replays, and returns copies of the outputs. A new signature (a stack
that lost a run) or :meth:`reset` captures anew. A capture that fails leaves the step
eager for good with one line on stderr (``failed`` says why); ``benchmarks/
gpu_stack_check.sh`` fails loudly on that line.

The backend (:class:`CudaBackend`) is the only part that needs a GPU; the tests drive
the bookkeeping with a backend that replays the function on the static buffers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

#: what stderr says when a capture fails (the GPU check looks for it)
FALLBACK_LINE = "wsram: CUDA graph capture failed"


class CudaBackend:
    """Warm-up on a side stream, capture, replay: ``torch.cuda.CUDAGraph``."""

    def warm(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        return out

    def capture(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, Any]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn(*args)
        return graph, out

    def replay(self, graph: Any) -> None:
        graph.replay()


def signature(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a captured graph is valid for: the structure, each tensor's shape, dtype and
    device, and every other value as it is."""
    leaves, spec = tree_flatten(args)
    return (str(spec), *((tuple(x.shape), x.dtype, str(x.device)) if isinstance(x, Tensor)
                         else ("value", x) for x in leaves))


class GraphedStep:
    """``fn`` eagerly for ``warmup`` calls per signature, then as one replayed graph."""

    def __init__(self, fn: Callable[..., Any], warmup: int = 3, backend: Any = None):
        self.fn, self.warmup = fn, warmup
        self.backend = backend if backend is not None else CudaBackend()
        self.failed: str | None = None  # why capturing failed (then eager for good)
        self.captures = 0  # graphs captured so far
        self.replays = 0
        self.reset()

    def reset(self) -> None:
        """Forget the graph (the tensors it reads were replaced): warm up and capture anew."""
        self.key: tuple[Any, ...] | None = None
        self.seen = 0
        self.graph: Any = None
        self.static_in: list[Any] = []
        self.static_out: Any = None

    def __call__(self, *args: Any) -> Any:
        if self.failed is not None:
            return self.fn(*args)
        key = signature(args)
        if key != self.key:
            self.reset()
            self.key = key
        if self.graph is None:
            if self.seen < self.warmup:
                self.seen += 1
                return self.backend.warm(self.fn, args)
            leaves, spec = tree_flatten(args)
            self.static_in = [x.clone() if isinstance(x, Tensor) else x for x in leaves]
            try:
                self.graph, self.static_out = self.backend.capture(
                    self.fn, tree_unflatten(self.static_in, spec))
            except Exception as e:  # noqa: BLE001 - any capture failure: run eagerly
                first = str(e).splitlines()[0][:160] if str(e) else ""
                self.failed = f"{type(e).__name__}: {first}"
                self.graph = None
                print(f"{FALLBACK_LINE} ({self.failed}); the update runs eagerly",
                      file=sys.stderr)
                return self.fn(*args)
            self.captures += 1
        leaves, _ = tree_flatten(args)
        with torch.no_grad():
            for dst, src in zip(self.static_in, leaves, strict=True):
                if isinstance(dst, Tensor):
                    dst.copy_(src)
        self.backend.replay(self.graph)
        self.replays += 1
        return tree_map(lambda t: t.clone() if isinstance(t, Tensor) else t, self.static_out)


__all__ = ["FALLBACK_LINE", "CudaBackend", "GraphedStep", "signature"]
