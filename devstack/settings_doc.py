"""The settings reference of docs/operations.md, generated from `common.settings.Settings`.

Every setting is documented where it is defined: the comment above its field in
common/settings.py (or after it, on its line). This module turns the class into a table
(environment variable, type, default, that comment), so the reference cannot drift from
the code: tests/test_settings_doc.py fails when the file differs from what this writes.

    python -m devstack.settings_doc          # rewrite the section of docs/operations.md
    python -m devstack.settings_doc --check  # exit 1 if it is out of date

The section lies between the BEGIN and END markers below. Types and defaults come from
the class itself (what pydantic really applies); descriptions from the source, read
with `ast` and `tokenize`. Secrets show only what the class really defaults to (unset,
or a URL without its password).
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import re
import sys
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from common import settings as settings_module
from common.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "operations.md"
SOURCE = Path(settings_module.__file__)
BEGIN = "<!-- settings-reference:begin -->"
END = "<!-- settings-reference:end -->"
COMMAND = "python -m devstack.settings_doc"

# A section divider in the class body: `# --- worker ----...`.
_SECTION = re.compile(r"^---\s*(.+?)\s*-*$")
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^@/\s]+@")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY$")

# Fields that common/settings.py leaves without a comment of their own, described here
# until they get one (a comment in the source always wins over these).
FALLBACK = {
    "database_url": "SQLAlchemy URL of PostgreSQL, the source of truth and the queue of "
    "record (`postgresql+psycopg://USER:PASSWORD@HOST:5432/DB`).",
    "redis_url": "Redis, the Celery transport (wake-ups, progress, cancel flags, v1 notices).",
    "s3_region": "Region of the bucket.",
    "s3_bucket": "Bucket of inputs and outputs (`ssd-img2img storage ensure-bucket` creates it).",
    "s3_access_key_id": "S3 credentials; unset = the usual AWS credential chain.",
    "s3_secret_access_key": "S3 credentials; unset = the usual AWS credential chain.",
    "output_url_ttl_seconds": "How long a presigned output URL in a result stays valid.",
    "max_image_bytes": "Largest input image accepted (bytes, after base64 decoding or "
    "fetching); larger ones are refused with 400.",
    "max_image_pixels": "Largest input image accepted (width × height); larger ones are "
    "refused with 400.",
    "max_output_side": "Longest side of an output: larger inputs are scaled down to it "
    "(each side rounded down to a multiple of 8).",
    "max_prompt_chars": "Longest prompt (and negative prompt) accepted, in characters.",
    "model_id": "The model: a Hugging Face hub id or a local diffusers folder.",
    "model_device": "Where the GPU worker runs the model: `auto` = CUDA when torch sees it, "
    "else the CPU.",
    "model_variant": "Weights variant to load (e.g. `fp16`); unset = the default weights.",
}


@dataclass(frozen=True)
class Documented:
    """What the source says about one field: its section, type and comment."""

    section: str
    annotation: ast.expr
    comment: str
    follows: str | None  # the field right above it (no blank line between), if any


@dataclass(frozen=True)
class Row:
    section: str
    env: str
    type: str
    default: str
    description: str


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """Line number → (comment text, whether the comment is alone on its line)."""
    found: dict[int, tuple[str, bool]] = {}
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            alone = not lines[row - 1][:col].strip()
            found[row] = (token.string.lstrip("#").strip(), alone)
    return found


def read_source(source: str, class_name: str = "Settings") -> dict[str, Documented]:
    """Each field of `class_name`, in source order, with the comment block right above
    it (a section divider, a blank line or code ends the block) and any comment on its
    own lines; the section is the last divider above it."""
    comments = _comments(source)
    cls = next(
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ClassDef) and node.name == class_name
    )
    documented: dict[str, Documented] = {}
    section = "general"
    last_line = cls.lineno
    previous: tuple[str, int] | None = None  # the last field: name, last line
    for node in cls.body:
        for line in range(last_line + 1, node.lineno):
            text, alone = comments.get(line, ("", False))
            divider = _SECTION.match(text)
            if alone and divider:
                section = divider[1]
        last_line = node.end_lineno or node.lineno
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        inline = [
            comments[line][0]
            for line in range(node.lineno, last_line + 1)
            if line in comments and not comments[line][1]
        ]
        comment = " ".join([*_block_above(node.lineno, comments), *inline])
        follows = previous[0] if previous and previous[1] == node.lineno - 1 else None
        documented[node.target.id] = Documented(section, node.annotation, comment, follows)
        previous = (node.target.id, last_line)
    return documented


def _block_above(lineno: int, comments: dict[int, tuple[str, bool]]) -> list[str]:
    block: list[str] = []
    line = lineno - 1
    while line in comments and comments[line][1] and not _SECTION.match(comments[line][0]):
        block.insert(0, comments[line][0])
        line -= 1
    return block


def _env_name(name: str, field: FieldInfo, prefix: str = "") -> str:
    """The environment variable pydantic-settings reads (case-insensitively)."""
    alias = field.validation_alias or field.alias
    if isinstance(alias, str):
        return alias.upper()
    return (prefix + name).upper()


def _type_text(annotation: ast.expr) -> str:
    """A field's annotation as an operator reads it."""
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        parts = [_type_text(side) for side in (annotation.left, annotation.right)]
        kept = [part for part in parts if part != "None"]
        return " or ".join(kept) + (", optional" if len(kept) < len(parts) else "")
    if isinstance(annotation, ast.Subscript):
        outer = ast.unparse(annotation.value)
        inner = annotation.slice
        if outer == "Literal":
            values = inner.elts if isinstance(inner, ast.Tuple) else [inner]
            return " \\| ".join(f"`{ast.literal_eval(value)}`" for value in values)
        if outer == "list":
            return f"JSON list of {_type_text(inner)}s"
    simple = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
    text = ast.unparse(annotation)
    return {"SecretStr": "string (secret)"}.get(text, simple.get(text, text))


def _bounds(field: FieldInfo) -> str:
    """The field's bounds, e.g. `≥ 0, ≤ 65535`."""
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    found = []
    for constraint in field.metadata:
        for attr, symbol in symbols.items():
            value = getattr(constraint, attr, None)
            if value is not None:
                found.append(f"{symbol} {_number(value)}")
        for attr, word in (("min_length", "at least"), ("max_length", "at most")):
            value = getattr(constraint, attr, None)
            if value is not None:
                found.append(f"{word} {value} long")
    return ", ".join(found)


def _number(value: float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{_number(seconds / size)} {unit}"
    return f"{_number(seconds)} s"


def _default_value(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def default_text(env: str, field: FieldInfo) -> str:
    """The default as it would be written in the environment; never a secret's value."""
    value = _default_value(field)
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(a secret)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | tuple | dict):
        return f"`{json.dumps(value)}`"
    if isinstance(value, int | float):
        text = f"`{_number(value)}`"
        if env.endswith("_SECONDS") and value >= 120:
            text += f" ({_duration(value)})"
        if env.endswith("_BYTES") and value >= 1024 * 1024 and value % (1024 * 1024) == 0:
            text += f" ({value // (1024 * 1024)} MiB)"
        return text
    text = _URL_PASSWORD.sub(r"\1***@", str(value))
    if _SECRET_NAME.search(env) and text:
        return "(a secret)"
    return f"`{text}`" if text else '`""`'


def _description(
    name: str, doc: Documented | None, fields: dict[str, FieldInfo], prefix: str
) -> str:
    """The field's own comment; else FALLBACK's text; else, for a field right below
    another (a pair one comment describes), a pointer to that one."""
    if doc and doc.comment:
        text = doc.comment
    elif name in FALLBACK:
        text = FALLBACK[name]
    elif doc and doc.follows:
        above = _env_name(doc.follows, fields[doc.follows], prefix)
        text = f"See `{above}` (one comment covers both)."
    else:
        text = "—"
    return text.replace("|", "\\|")


def rows(source: str | None = None, settings_class: type[BaseSettings] = Settings) -> list[Row]:
    """One row per field of the class, in the order pydantic keeps (the source's)."""
    documented = read_source(source if source is not None else SOURCE.read_text())
    fields = settings_class.model_fields
    prefix = str(settings_class.model_config.get("env_prefix") or "")
    found = []
    for name, field in fields.items():
        doc = documented.get(name)
        env = _env_name(name, field, prefix)
        kind = _type_text(doc.annotation) if doc else str(field.annotation)
        bounds = _bounds(field)
        found.append(
            Row(
                section=doc.section if doc else "general",
                env=env,
                type=f"{kind}, {bounds}" if bounds else kind,
                default=default_text(env, field),
                description=_description(name, doc, fields, prefix),
            )
        )
    return found


def render(table_rows: Sequence[Row]) -> str:
    """The generated section, markers included."""
    out = [
        BEGIN,
        f"<!-- Generated by `{COMMAND}` from common/settings.py: edit the comments there,",
        "     then run it; tests/test_settings_doc.py fails while this differs. -->",
    ]
    section = None
    for row in table_rows:
        if row.section != section:
            section = row.section
            out += ["", f"### {section[:1].upper()}{section[1:]}", ""]
            out += ["| variable | type | default | description |", "|---|---|---|---|"]
        out.append(f"| `{row.env}` | {row.type} | {row.default} | {row.description} |")
    out += ["", END]
    return "\n".join(out)


def update(doc: str, section: str) -> str:
    """`doc` with the text between the markers (markers included) replaced."""
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN} ... {END} are missing")
    return doc[:start] + section + doc[end + len(END) :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the doc is out of date")
    parser.add_argument("--doc", type=Path, default=DOC, help="the Markdown file (%(default)s)")
    args = parser.parse_args(argv)
    current = args.doc.read_text()
    try:
        wanted = update(current, render(rows()))
    except ValueError as exc:
        print(f"{args.doc}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if wanted != current:
            print(
                f"{args.doc}: the settings reference differs from common/settings.py; "
                f"run `{COMMAND}`",
                file=sys.stderr,
            )
            return 1
        return 0
    if wanted != current:
        args.doc.write_text(wanted)
        print(f"{args.doc}: settings reference rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
