"""Detached background processes tracked by pidfiles.

The stack must be stoppable from a different process than the one that started it
(`make up` then `make down`), so the pidfile under `<state>/pids/` is the only source of
truth. A JSON sidecar records the process start time so a stale pidfile whose PID was
reused by an unrelated process is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PIDS_DIR = "pids"
LOGS_DIR = "logs"

# Popen objects of the processes this Python process started. Polling them reaps the child
# (otherwise a stopped server stays a zombie that kill(pid, 0) still reports as alive) and
# keeps Popen.__del__ from warning about a "still running" subprocess.
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


@dataclass(frozen=True)
class RunAs:
    """Unprivileged identity for a child (PostgreSQL refuses to run as root)."""

    uid: int
    gid: int


def pidfile_path(state_dir: Path, name: str) -> Path:
    return state_dir / PIDS_DIR / f"{name}.pid"


def log_path(state_dir: Path, name: str) -> Path:
    return state_dir / LOGS_DIR / f"{name}.log"


def _meta_path(pidfile: Path) -> Path:
    return pidfile.with_suffix(".json")


def proc_starttime(pid: int) -> int | None:
    """Kernel start time of `pid` (clock ticks since boot), None when unknown/not on Linux."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    # fields[0] is field 3 (state); starttime is field 22.
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _proc_state(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split(" ", 1)[0]


def is_running(pid: int) -> bool:
    """True when `pid` exists and is not a zombie (reaping it first if it is our child)."""
    if pid <= 0:
        return False
    with _children_lock:
        child = _children.get(pid)
        if child is not None:
            if child.poll() is None:
                return True
            del _children[pid]
            return False
    # Our child but not started through start_process (or its Popen is gone): reap it.
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    else:
        if reaped == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie whose parent has not reaped it yet is dead for our purposes.
    return _proc_state(pid) != "Z"


def read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    try:
        return int(text.split()[0])
    except (IndexError, ValueError):
        return None


def pidfile_process_alive(path: Path) -> int | None:
    """PID recorded in `path` when that very process (same start time) is still running."""
    pid = read_pidfile(path)
    if pid is None or not is_running(pid):
        return None
    try:
        meta = json.loads(_meta_path(path).read_text())
    except (OSError, ValueError):
        meta = {}
    recorded = meta.get("starttime")
    actual = proc_starttime(pid)
    if recorded is not None and actual is not None and recorded != actual:
        return None  # PID reused by another process: the recorded one is gone.
    return pid


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def start_process(
    name: str,
    argv: Sequence[str],
    state_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    run_as: RunAs | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` detached (own session) with output appended to `<state>/logs/<name>.log`.

    Writes `<state>/pids/<name>.pid` (just the PID, so `kill $(cat ...)` works) plus a JSON
    sidecar with the start time. The own session means the server survives the launcher
    and Ctrl-C in the launching terminal does not reach it; the group it leads is what
    stop_pidfile() SIGKILLs as a last resort.
    """
    pidfile = pidfile_path(state_dir, name)
    log = log_path(state_dir, name)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as log_file:
        log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        log_file.flush()
        extra: dict[str, object] = {}
        if run_as is not None:
            # extra_groups=[] drops root's supplementary groups along with uid/gid.
            extra = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
        popen = subprocess.Popen(  # type: ignore[call-overload]
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
            **extra,
        )
    with _children_lock:
        _children[popen.pid] = popen
    record_pid(pidfile, popen.pid, argv)
    return popen


def record_pid(pidfile: Path, pid: int, argv: Sequence[str]) -> None:
    """Write `pidfile` and its sidecar for a process started some other way (forked by
    a helper process), so that stop_pidfile() stops it as it stops the ones above."""
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    meta = {"pid": pid, "starttime": proc_starttime(pid), "argv": list(argv)}
    _write_atomic(_meta_path(pidfile), json.dumps(meta))
    _write_atomic(pidfile, f"{pid}\n")


def wait_exit(pid: int, timeout: float, interval: float = 0.02) -> bool:
    """Wait up to `timeout` seconds for `pid` to go away; True when it did."""
    deadline = time.monotonic() + timeout
    while is_running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def _group_alive(pgid: int) -> bool:
    """True while a non-zombie process is in group `pgid`.

    killpg(pgid, 0) alone also counts zombies: when another process (e.g. the test runner
    that started the server) has not reaped its dead child yet, that would never turn False.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # After the comm: state ppid pgrp ...
        fields = raw[raw.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _remove_pidfile(path: Path) -> None:
    path.unlink(missing_ok=True)
    _meta_path(path).unlink(missing_ok=True)


def stop_pidfile(path: Path, timeout: float = 10.0, sig: int = signal.SIGTERM) -> bool:
    """Stop the process recorded in `path`: send `sig`, wait, then SIGKILL its process group.

    Idempotent: a missing, empty or stale pidfile is just removed. Returns True when a live
    process was stopped.
    """
    pid = pidfile_process_alive(path)
    if pid is None:
        _remove_pidfile(path)
        return False
    # start_process() made the child a session (and group) leader. Only then is its group
    # ours to kill; never signal a group we merely share (that could be our own).
    try:
        owns_group = os.getpgid(pid) == pid and pid != os.getpgrp()
    except ProcessLookupError:
        _remove_pidfile(path)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if not wait_exit(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            if owns_group:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        wait_exit(pid, 5.0)
    # The leader is gone; helpers it left behind in its group (orphans) must not outlive it.
    if owns_group and _group_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while _group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    _remove_pidfile(path)
    return True


def log_tail(path: Path, max_bytes: int = 4000) -> str:
    """End of a service log, for error messages when a server fails to start."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""
