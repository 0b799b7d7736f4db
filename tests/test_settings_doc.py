"""docs/operations.md documents every setting as common/settings.py defines it: the
reference there is generated (devstack/settings_doc.py) and must not drift."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from common.settings import Settings
from devstack import settings_doc

FIX = "run `python -m devstack.settings_doc` and commit docs/operations.md"


def test_the_operations_guide_documents_the_settings_as_they_are() -> None:
    current = settings_doc.DOC.read_text()
    wanted = settings_doc.update(current, settings_doc.render(settings_doc.rows()))
    diff = "\n".join(
        difflib.unified_diff(
            current.splitlines(), wanted.splitlines(), "docs/operations.md", "generated", n=0
        )
    )
    assert wanted == current, f"the settings reference is out of date: {FIX}\n{diff[:4000]}"


def test_every_setting_has_a_row_with_a_description() -> None:
    rows = {row.env: row for row in settings_doc.rows()}
    assert set(rows) == {name.upper() for name in Settings.model_fields}
    for name in ("LOG_FORMAT", "METRICS_PORT", "HEALTH_CHECK_TIMEOUT_SECONDS"):
        assert rows[name].section == "operations", name
    undescribed = sorted(env for env, row in rows.items() if row.description == "—")
    assert not undescribed, f"comment these fields in common/settings.py: {undescribed}"


# A settings class of its own, to see each rule of the generator at work.
SOURCE = """
class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env")

    # The mode.
    mode: Literal["a", "b"] = "a"

    # --- infrastructure -----------------------------------
    # Where the database is,
    # on two lines.
    url: str = "postgresql://user:hunter2@db:5432/x"
    count: int = Field(default=3, ge=1, le=9)
    other: int = 4  # its own words

    # --- secrets ---
    token: SecretStr | None = None
    password: str = "changeme"
    wait_seconds: float = 7200
    names: list[str] = Field(default_factory=lambda: ["x"])
"""


class Example(BaseSettings):
    mode: Literal["a", "b"] = "a"
    url: str = "postgresql://user:hunter2@db:5432/x"
    count: int = Field(default=3, ge=1, le=9)
    other: int = 4
    token: SecretStr | None = None
    password: str = "changeme"
    wait_seconds: float = 7200
    names: list[str] = Field(default_factory=lambda: ["x"])


def test_the_generator_reads_comments_types_defaults_and_hides_secrets() -> None:
    rows = {row.env: row for row in settings_doc.rows(SOURCE, Example)}
    assert list(rows) == [name.upper() for name in Example.model_fields]
    assert (rows["MODE"].section, rows["MODE"].type, rows["MODE"].description) == (
        "general",
        "`a` \\| `b`",
        "The mode.",
    )
    assert rows["URL"].section == "infrastructure"
    assert rows["URL"].description == "Where the database is, on two lines."
    assert rows["URL"].default == "`postgresql://user:***@db:5432/x`"
    assert (rows["COUNT"].type, rows["COUNT"].default) == ("integer, ≥ 1, ≤ 9", "`3`")
    assert rows["COUNT"].description == "See `URL` (one comment covers both)."
    assert rows["OTHER"].description == "its own words"
    assert rows["TOKEN"].section == "secrets"
    assert (rows["TOKEN"].type, rows["TOKEN"].default) == ("string (secret), optional", "unset")
    assert rows["PASSWORD"].default == "(a secret)"
    assert rows["WAIT_SECONDS"].default == "`7200` (2 h)"
    assert (rows["NAMES"].type, rows["NAMES"].default) == ("JSON list of strings", '`["x"]`')
    rendered = settings_doc.render(list(rows.values()))
    assert "hunter2" not in rendered and "changeme" not in rendered
    assert rendered.startswith(settings_doc.BEGIN) and rendered.endswith(settings_doc.END)


def _doc(tmp_path: Path, body: str) -> Path:
    doc = tmp_path / "operations.md"
    doc.write_text(f"# Ops\n\n{body}\n\nAfter.\n")
    return doc


def test_check_fails_on_drift_and_the_generator_mends_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _doc(tmp_path, f"{settings_doc.BEGIN}\n| stale |\n{settings_doc.END}")
    assert settings_doc.main(["--check", "--doc", str(doc)]) == 1
    assert "python -m devstack.settings_doc" in capsys.readouterr().err
    assert settings_doc.main(["--doc", str(doc)]) == 0
    assert settings_doc.main(["--check", "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Ops\n\n") and text.endswith("\n\nAfter.\n")
    assert "| `METRICS_PORT` |" in text and "| stale |" not in text


def test_check_refuses_a_file_without_the_markers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _doc(tmp_path, "no markers")
    assert settings_doc.main(["--check", "--doc", str(doc)]) == 2
    assert "markers" in capsys.readouterr().err
