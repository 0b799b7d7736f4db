"""Text that can be stored: every string field of every request body uses `Text`.

PostgreSQL's `text` cannot hold NUL, its `jsonb` refuses the escape `\\u0000`, and a lone
UTF-16 surrogate (valid in a JSON string as `\\udfff`, not in UTF-8) cannot be sent to
it at all. Each would fail at the first write as a 500, after the input was stored:
refused at parsing instead, as a 400 naming the field, before anything is charged or
stored (the bad-input corpus, tests/test_bad_input.py). Pydantic refuses some lone
surrogates itself, not all: a string that is only a low surrogate passes it."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: str) -> str:
    found = _UNSTORABLE.search(value)
    if found is None:
        return value
    if found.group() == "\x00":
        raise PydanticCustomError("text_nul", "must not contain NUL characters")
    raise PydanticCustomError(
        "text_surrogate", "must be valid Unicode: it holds a lone surrogate (U+D800–U+DFFF)"
    )


Text = Annotated[str, AfterValidator(storable)]
