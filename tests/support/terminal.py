"""A command run on a pseudo-terminal, as a person at a terminal runs it: its stdout,
stderr and stdin are the terminal (isatty() is true), and the test reads what it draws
and types answers."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Sequence


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Terminal:
    def __init__(self, args: Sequence[str], env: dict[str, str], stdin_tty: bool = True) -> None:
        """`stdin_tty=False`: stdin is /dev/null (a command run from a script that
        still draws on a terminal)."""
        master, slave = pty.openpty()
        self.master = master
        stdin = slave if stdin_tty else subprocess.DEVNULL
        self.process = subprocess.Popen(
            list(args),
            stdin=stdin,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
            # A shell starts commands with Ctrl-C's default; a pytest-xdist worker
            # ignores SIGINT, and an ignored signal stays ignored across exec.
            preexec_fn=_default_sigint,
        )
        os.close(slave)  # the child holds it; EOF on the master once the child is gone
        self.output = ""

    def _read(self, timeout: float) -> bool:
        """Read what is there within `timeout`; False at end of output."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not chunk:
            return False
        self.output += chunk.decode("utf-8", "replace")
        return True

    def read_until(self, text: str, timeout: float = 120) -> str:
        """Everything drawn so far, once `text` is in it."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline, f"no {text!r} in {self.output[-2000:]!r}"
            assert self._read(0.1), f"ended without {text!r}: {self.output[-2000:]!r}"
        return self.output

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the command, as the terminal sends it."""
        self.process.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 300) -> int:
        """Read to the end; the exit status."""
        deadline = time.monotonic() + timeout
        while self._read(0.1):
            assert time.monotonic() < deadline, f"still running: {self.output[-2000:]!r}"
        code = self.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        os.close(self.master)
        return code
