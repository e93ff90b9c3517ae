"""Terminal output that can never be what kills a run.

A closed pipe (``wsram train ... | tee log`` after a Ctrl-C, ``| head``) or a terminal that
went away (an ssh session dropping) makes every later write to stdout or stderr fail. A
:class:`GuardedStream` swallows that failure, sends what follows to the null device, and
tells its listeners (the training loop, which then checkpoints and stops as on a signal).
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

#: called with the stream's name ("stdout" or "stderr") the first time a write fails
listeners: list[Callable[[str], None]] = []

# errors meaning "nobody reads this stream any more": a closed pipe, a hung-up terminal
_GONE = (errno.EPIPE, errno.EIO, errno.ENXIO, errno.EBADF, errno.ECONNRESET)


class GuardedStream:
    """A text stream that turns a failed write into silence and a notice to ``listeners``."""

    def __init__(self, stream: TextIO, name: str):
        self.stream, self.name, self.lost = stream, name, False

    def _gone(self) -> None:
        if self.lost:
            return
        self.lost = True
        try:  # later writes, the interpreter's last flush included, go nowhere quietly
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):
            pass
        for listener in list(listeners):
            listener(self.name)

    def _guard(self, fn: Callable[[], Any], default: Any) -> Any:
        if self.lost:
            return default
        try:
            return fn()
        except OSError as e:
            if e.errno not in _GONE and not isinstance(e, BrokenPipeError):
                raise
        except ValueError:  # "I/O operation on closed file"
            pass
        self._gone()
        return default

    def write(self, s: str) -> int:
        return self._guard(lambda: self.stream.write(s), len(s))

    def flush(self) -> None:
        self._guard(self.stream.flush, None)

    def isatty(self) -> bool:
        return self._guard(self.stream.isatty, False)

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, buffer, ...
        return getattr(self.stream, name)


class LineProgress:
    """Progress for a stream that is not a terminal (a log file, a cluster job's output):
    a plain line every tenth of the way or every ``seconds``, whichever comes first,
    instead of a bar redrawn with carriage returns. The calls a training loop makes of a
    ``tqdm`` bar: ``update``, ``set_postfix``, ``close``."""

    def __init__(self, total: int, initial: int, desc: str, stream: TextIO,
                 seconds: float = 60.0):
        self.total, self.n, self.desc, self.stream = total, initial, desc, stream
        self.every = max(1, total // 10)
        self.seconds, self.start, self.first = seconds, time.monotonic(), initial
        self.last_time, self.postfix = self.start, ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n % self.every == 0 or now - self.last_time >= self.seconds:
            self.last_time = now
            rate = (self.n - self.first) / max(now - self.start, 1e-9)
            print(f"{self.desc}: update {self.n} of {self.total} ({self.n / self.total:.0%}), "
                  f"{rate:.1f} updates/s{self.postfix}", file=self.stream, flush=True)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def close(self) -> None:
        """Nothing to clear: every line stays."""


def guard_std_streams() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` (once) in :class:`GuardedStream`."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, GuardedStream):
            setattr(sys, name, GuardedStream(stream, name))


def unguard_std_streams() -> None:
    """Undo :func:`guard_std_streams` (for callers that run the command in-process)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, GuardedStream):
            setattr(sys, name, stream.stream)
