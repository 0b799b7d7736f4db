"""The layout (docs/development.md): the three processes (api/, worker/, background/)
sit side by side and never import each other; common/ (the domain and infrastructure
they share) imports none of them; devstack/, the local stack, is imported by no process
and is left out of the production images."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

PROCESSES = ("api", "worker", "background")


def _imported_packages(package: str) -> dict[str, set[str]]:
    """For each module of `package`: the top-level packages it imports (anywhere in it,
    lazily inside functions too)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package", [*PROCESSES, "common"])
def test_a_process_imports_no_other_process_nor_the_local_stack(package: str) -> None:
    forbidden = {*PROCESSES, "cli", "devstack", "tests", "bench"} - {package}
    wrong = {
        module: sorted(names & forbidden)
        for module, names in _imported_packages(package).items()
        if names & forbidden
    }
    assert not wrong, wrong


def _copied(dockerfile: str) -> set[str]:
    lines = (ROOT / "infra" / dockerfile).read_text().splitlines()
    return {line.split()[1] for line in lines if line.startswith("COPY ")}


def test_the_production_images_carry_their_process_and_not_the_local_stack() -> None:
    api, worker = _copied("api.Dockerfile"), _copied("worker.Dockerfile")
    # The API image also runs the CPU worker (docker-compose.yml: `python -m background`).
    assert {"api", "background", "common", "migrations"} <= api
    assert {"worker", "common"} <= worker
    assert "background" not in worker
    assert "devstack" not in api | worker
