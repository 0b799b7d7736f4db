"""GPU workers forked from one process that has already imported them, for the tests
that start many (tests/test_faults.py).

Importing the worker (torch, diffusers, transformers) costs 15-20 s of CPU per process
on a 2-core VM, while the model load and warm-up of the tiny model take about a second
(docs/performance.md "What the suite costs"). The zygote pays the import once; each
worker is then a fork that runs `worker.__main__.main`, the same function `python -m
worker` runs, under its own environment, session, log and pidfile. Killing, SIGTERM,
recycling and the exit status behave as for a process started from scratch; the start
path itself (`python -m worker`) is what the live stack and tests/test_packaging.py run.

Protocol, one JSON line each way on stdin/stdout: the test sends
`{"name", "argv", "env", "cwd", "log", "exit_file"}` and reads back `{"pid": ...}`.
The zygote reaps its children and writes each one's exit status (negative: the signal
that killed it, as in `subprocess`) to its `exit_file`.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any


class Zygote:
    """The tests' end: starts the zygote and asks it for workers."""

    def __init__(self, env: Mapping[str, str], cwd: Path, log: Path) -> None:
        self.cwd = cwd
        with log.open("ab") as log_file:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "tests.support.worker_zygote"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=dict(env),
                cwd=cwd,
                text=True,
            )
        self._read()  # {"ready": pid}: imported

    def _read(self) -> dict[str, Any]:
        stdout: IO[str] | None = self.popen.stdout
        assert stdout is not None
        line = stdout.readline()
        assert line, f"the worker zygote exited ({self.popen.wait()})"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def fork(self, argv: Sequence[str], env: Mapping[str, str], log: Path, exit_file: Path) -> int:
        """A worker running `python -m worker ARGV` under `env`; its pid."""
        stdin = self.popen.stdin
        assert stdin is not None
        request = {
            "argv": list(argv),
            "env": dict(env),
            "cwd": str(self.cwd),
            "log": str(log),
            "exit_file": str(exit_file),
        }
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        pid: int = self._read()["pid"]
        return pid

    def close(self) -> None:
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        self.popen.wait(30)


def _run_child(request: dict[str, Any]) -> None:
    """In the forked child: become the worker the request describes, never return."""
    code = 1
    try:
        os.setsid()  # as devstack.process.start_process: its own session and group
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(devnull)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])

        from common.settings import get_settings

        get_settings.cache_clear()  # read from this worker's environment
        sys.argv = ["python -m worker", *request["argv"]]
        from worker.__main__ import main

        code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _exit_status(wait_status: int) -> int:
    return -os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else os.WEXITSTATUS(wait_status)


def _native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def serve() -> None:
    import worker.serve  # noqa: F401  (the import every fork then shares)

    # A fork copies only the calling thread: a lock another thread held stays held in
    # the child. One torch thread (OMP_NUM_THREADS=1) starts none at import.
    if (threads := _native_threads()) != 1:
        sys.exit(f"worker zygote: {threads} threads after the import; set OMP_NUM_THREADS=1")
    exit_files: dict[int, Path] = {}
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ)
    print(json.dumps({"ready": os.getpid()}), flush=True)
    while True:
        for _key, _events in selector.select(timeout=0.05):
            line = sys.stdin.readline()
            if not line:
                return  # the tests are done with it; its children run on until stopped
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _run_child(request)
            exit_files[pid] = Path(request["exit_file"])
            print(json.dumps({"pid": pid}), flush=True)
        while exit_files:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            path = exit_files.pop(pid, None)
            if path is not None:
                path.write_text(f"{_exit_status(status)}\n")


if __name__ == "__main__":
    serve()
