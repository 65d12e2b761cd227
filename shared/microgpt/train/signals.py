"""SIGTERM/SIGINT as a request to stop: finish the step, checkpoint, return.

    with stop_on_signals() as stop:
        train("micro", ..., stop_flag=stop)

The loop checks the flag only at step boundaries, so a signal never leaves a half-applied
update or a half-written checkpoint. A second signal while stopping raises
KeyboardInterrupt (the user insists). Handlers can only be installed from the main
thread; elsewhere the flag is returned without handlers.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An Event set by SIGTERM or SIGINT while the block runs; the old handlers come back after."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in _SIGNALS}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
