"""SIGTERM and SIGINT as a flag the loop reads after each step: finish it, save, end "resumable"."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from capidsl.exec.distributed import signals_to_catch


class Signals:
    """SIGTERM/SIGINT set a flag that the loop reads after each step (a second SIGINT interrupts)."""

    def __init__(self):
        self.received: str | None = None

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self._handle) for s in signals_to_catch()}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)
