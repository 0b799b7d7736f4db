"""Where the client finds its API URL and key: a flag, else the environment
(`SSD_API_URL`, `SSD_API_KEY`), else the config file
(`$XDG_CONFIG_HOME/ssd-img2img/client.json`, `~/.config/...` by default).

The file holds a key, so it must be readable by its owner only (mode 0600): the client
refuses one that others can read, as ssh does with a private key, rather than use a
secret that may have leaked."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import click

DEFAULT_API_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class ClientConfig:
    api_url: str
    api_key: str


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ssd-img2img" / "client.json"


def _from_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise click.ClickException(
            f"{path} is readable by others (mode {mode:o}): it holds an API key; chmod 600 {path}"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{path}: not a JSON object ({exc})") from exc
    if not isinstance(data, dict):
        raise click.ClickException(f"{path}: not a JSON object")
    return {k: v for k, v in data.items() if isinstance(v, str)}


def resolve(api_url: str | None, api_key: str | None) -> ClientConfig:
    """The URL and key in force: flags, then the environment, then the config file."""
    stored = _from_file(config_path())
    url = api_url or os.environ.get("SSD_API_URL") or stored.get("api_url") or DEFAULT_API_URL
    key = api_key or os.environ.get("SSD_API_KEY") or stored.get("api_key")
    if not key:
        raise click.ClickException(
            "no API key: pass --api-key, set SSD_API_KEY, or run `ssd-img2img client login`"
        )
    return ClientConfig(api_url=url.rstrip("/"), api_key=key)


def save(config: ClientConfig) -> Path:
    """Write the config file, created with mode 0600 (never briefly readable by others)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = json.dumps({"api_url": config.api_url, "api_key": config.api_key}, indent=2)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(body + "\n")
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT
    return path
