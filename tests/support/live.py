"""The stack the end-to-end tests drive: its settings and the clients to reach it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Stack:
    state_dir: Path
    env: dict[str, str]
    # Where each process ("api", "worker", "background") serves /metrics and its health.
    ops_urls: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return self.env["API_URL"]

    def cli(self, *args: str) -> str:
        """Run `ssd-img2img ARGS` against this stack; returns stdout."""
        result = self.run_cli(*args)
        assert result.exit_code == 0, result.stderr
        return result.stdout

    def run_cli(self, *args: str) -> CliResult:
        """`ssd-img2img ARGS` in this process, through click's test runner: the same
        commands, options and exit statuses, without the seconds of imports a new
        process costs on a small machine (`cli_process` runs the installed one). Only
        against the stack whose settings this process uses (its database, its Redis)."""
        from click.testing import CliRunner

        from cli.main import main

        assert os.environ.get("DATABASE_URL") == self.env["DATABASE_URL"], "another stack"
        result = CliRunner().invoke(main, list(args), env=self.env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return CliResult(result.exit_code, result.stdout, result.stderr)

    def cli_process(self, *args: str) -> CliResult:
        """`ssd-img2img ARGS` as a process of its own, as an operator runs it."""
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            env={**os.environ, **self.env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        return CliResult(result.returncode, result.stdout, result.stderr)

    def create_account(self, credits: int = 1000, name: str = "test") -> tuple[str, str]:
        """A new account, made through the admin API (a CLI process would cost a second
        of CPU per account; tests/test_accounts_cli.py covers the CLI's own); returns
        (account id, api key)."""
        with self.admin() as admin:
            response = admin.post("/accounts", json={"name": name, "credits": credits})
        assert response.status_code == 201, response.text
        data = response.json()
        return data["account"]["id"], data["api_key"]["api_key"]

    def admin(self) -> httpx.Client:
        """A client of the /admin API, with this stack's ADMIN_TOKEN."""
        headers = {"authorization": f"Bearer {self.env['ADMIN_TOKEN']}"}
        return httpx.Client(base_url=f"{self.api_url}/admin", headers=headers, timeout=60)

    def client(self, api_key: str | None = None) -> httpx.Client:
        headers = {"x-api-key": api_key} if api_key else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=60)
