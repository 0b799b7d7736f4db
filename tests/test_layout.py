"""The layout (docs/development.md): the three processes (api/, worker/, background/)
sit side by side and never import each other; common/ (the domain and infrastructure
they share) imports none of them; devstack/, the local stack, is imported by no process
and is left out of the production images."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support.live import ROOT

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


def _module_graph(
    packages: tuple[str, ...] = (*PROCESSES, "common", "cli", "devstack"),
    outside: set[str] | None = None,
    parents: bool = False,
) -> dict[str, set[str]]:
    """Module → the project's modules it imports at import time (top-level statements,
    `if TYPE_CHECKING:` blocks left out), and any of `outside` (top-level package names
    of other distributions, e.g. "torch") it imports itself. `parents`: importing a.b.c
    runs a/__init__.py and a/b/__init__.py too (left out for the circle check: a
    package that imports its own modules is no circle)."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:  # a submodule, else a name of the module
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        if parents:
            targets |= {t.rsplit(".", i)[0] for t in targets for i in range(1, t.count(".") + 1)}
        graph[name] = {t for t in targets if t in modules and t != name}
        graph[name] |= {t.split(".")[0] for t in targets} & (outside or set())
    return graph


def test_no_module_imports_itself_back_through_others() -> None:
    graph = _module_graph()
    assert graph.get("api.img2img.service")
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


MODEL_LIBRARIES = {"torch", "diffusers", "transformers"}


def test_only_the_model_tests_import_torch_when_collected() -> None:
    """`make test-fast` runs the model tests (tests/worker/) in a pytest process of their
    own: the other process then never imports torch and diffusers (over ten seconds of
    CPU on a small machine), as long as no other test module, nor what it imports,
    imports them at import time. The tests that run a model import it inside."""
    graph = _module_graph(
        (*PROCESSES, "common", "cli", "devstack", "tests", "bench"), MODEL_LIBRARIES, parents=True
    )
    assert MODEL_LIBRARIES & graph["worker.pipeline"]  # the check sees what it looks for

    def reaches(start: str) -> list[str] | None:
        """The import chain from `start` to a model library, if any."""
        seen, paths = {start}, [[start]]
        while paths:
            path = paths.pop()
            for target in sorted(graph.get(path[-1], ())):
                if target in MODEL_LIBRARIES:
                    return [*path, target]
                if target not in seen:
                    seen.add(target)
                    paths.append([*path, target])
        return None

    starts = [
        m
        for m in graph
        if m.startswith("tests.") and not m.startswith(("tests.worker", "tests.support"))
    ]
    chains = {m: chain for m in starts if (chain := reaches(m))}
    assert not chains, chains


_NAMED_PATH = re.compile(
    r"\b(?:api|common|worker|background|cli|devstack|tests|bench|migrations|infra|docs)"
    r"/[A-Za-z0-9_/.-]+\.(?:py|md|sh|Dockerfile)\b"
)


def test_every_file_the_code_and_docs_name_exists() -> None:
    """Docstrings, comments and docs name files by path: none may name one that is gone."""
    sources = [ROOT / "README.md", ROOT / "Makefile", ROOT / "docker-compose.yml"]
    for folder in (*PROCESSES, "common", "cli", "devstack", "tests", "bench", "docs", "infra"):
        sources += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".md", ".sh"}]
    missing = {
        f"{source.relative_to(ROOT)}: {named}"
        for source in sources
        for named in _NAMED_PATH.findall(source.read_text())
        if not (ROOT / named).exists()
    }
    assert not missing, sorted(missing)


# What builds or runs a statement; a module that needs one calls a service in common/.
_QUERY_BUILDERS = {"select", "insert", "update", "delete", "text", "func", "and_", "or_"}
_QUERY_CALLS = {"execute", "scalar", "scalars", "get", "query"}


def _queries_in(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            found += [f"imports {a.name}" for a in node.names if a.name in _QUERY_BUILDERS]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _QUERY_CALLS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in {"session", "conn", "connection"}
        ):
            found.append(f"line {node.lineno}: {node.func.value.id}.{node.func.attr}()")
    return found


def test_the_api_runs_no_query_of_its_own() -> None:
    """Services own the queries (docs/development.md): an endpoint calls common/, which
    a test on a real database covers without HTTP in between."""
    wrong = {
        str(path.relative_to(ROOT)): found
        for path in sorted((ROOT / "api").rglob("*.py"))
        if (found := _queries_in(path))
    }
    assert not wrong, wrong


def test_tests_share_code_through_the_support_package_only() -> None:
    """A helper imported from another test module drags that module's tests and fixtures
    along and hides what it is shared for (docs/development.md "Tests")."""
    wrong = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[0] == "tests" and parts[1:2] != ["support"]:
                    wrong[str(path.relative_to(ROOT))] = node.module
    assert not wrong, wrong
