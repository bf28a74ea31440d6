"""Ctrl-C and SIGTERM held while a driver talks to a library that must not be interrupted halfway (Ray).

Why: ray.init replaces the process's SIGTERM handler with its own `sys.exit`, and an exception thrown into
ray.init or into the middle of a run's publication would leave a half-started cluster or half a run's files.
So `HeldSignals` notes the signal, and the driver raises it at the points where it can stop cleanly.
"""
from __future__ import annotations

import signal
import threading

HELD = (signal.SIGINT, signal.SIGTERM)


class HeldSignals:
    """A context in which SIGINT and SIGTERM are noted, and raised by `check()`; a second signal raises at once.

    `check()` raises what the handler in place on entry would have raised (KeyboardInterrupt for Python's
    Ctrl-C handler, the CLI's SIGTERM exception), and KeyboardInterrupt where that handler was SIG_IGN or
    SIG_DFL: a suite sent SIGINT stops, even one its shell started with SIGINT ignored (a background job).
    On leaving without an exception, a signal still unchecked is raised. Off the main thread, where Python
    forbids handlers, the context does nothing.
    """

    def __init__(self):
        self.noted: list[int] = []
        self.previous: dict = {}
        self.active = threading.current_thread() is threading.main_thread()

    def __enter__(self) -> HeldSignals:
        if self.active:
            self.previous = {sig: signal.getsignal(sig) for sig in HELD}
            self.install()
        return self

    def install(self) -> None:
        """(Re)install the noting handler, over one a library put in its place meanwhile."""
        if self.active:
            for sig in HELD:
                signal.signal(sig, self._note)

    def _note(self, signum, frame) -> None:
        self.noted.append(signum)
        if len(self.noted) > 1:  # asked twice: a call that hangs must not hold the process
            self.check()

    def check(self) -> None:
        """Restore the handlers and raise for the first signal noted; nothing when none was.

        Raises:
            KeyboardInterrupt: a signal was noted (or what its previous handler raises).
        """
        if not self.noted:
            return
        previous = self.previous.get(self.noted[0])
        self._restore()
        if callable(previous):
            previous(self.noted[0], None)
        raise KeyboardInterrupt

    def _restore(self) -> None:
        if self.active:
            for sig, handler in self.previous.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
            self.active = False  # restored once; later installs are no-ops

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.check()
        self._restore()
        return False
