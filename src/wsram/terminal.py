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
