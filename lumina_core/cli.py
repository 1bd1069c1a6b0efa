"""What the command-line tools share: one-line argument errors, Ctrl-C that works during a long tensor operation,
SIGTERM that cleans up.

Python runs a signal handler only between bytecodes, so Ctrl-C during one long torch call (a huge attention) would
wait for the call to end, which can take minutes. `prompt_interrupt` lets the usual KeyboardInterrupt happen when
it can, and otherwise ends the process a few seconds after Ctrl-C from a watcher thread, which hears the signal at
once through `signal.set_wakeup_fd`. Outputs are written under temporary names and renamed when whole
(`lumina_core.outputs`), so ending the process mid-run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a process ended by Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (exit code 2), like every other error of the tools."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


@contextmanager
def prompt_interrupt(grace: float = 3.0) -> Iterator[None]:
    """Within the block, Ctrl-C ends the process after at most `grace` seconds even inside a long torch call,
    with one line on stderr and exit code 130. Only in the main thread; elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end)
    finished = threading.Event()
    threading.Thread(target=_watch, args=(read_end, grace, finished), daemon=True).start()
    try:
        yield
    finally:
        finished.set()  # the block ended (also by the KeyboardInterrupt itself): nothing to force
        signal.set_wakeup_fd(previous)
        os.close(write_end)  # the watcher's read returns b"" and it ends


def _watch(read_end: int, grace: float, finished: threading.Event) -> None:
    try:
        while received := os.read(read_end, 16):
            if signal.SIGINT in received and not finished.wait(grace):
                print("interrupted", file=sys.stderr, flush=True)
                os._exit(EXIT_INTERRUPTED)
    finally:
        os.close(read_end)


@contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(143) so `finally` blocks (temporary files) run; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_now(signum, frame):
        raise SystemExit(EXIT_TERMINATED)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
