"""What the user gives as text, read the same way by `python -m phos_dask` and `python -m phos_dask.jobqueue`:
KEY=VALUE flags with JSON-or-text values, fsspec storage options, and the error for what the user asked for.
Small on purpose: the command lines import it, it imports nothing of theirs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from phos_dask.errors import EXIT_USAGE, PhosError


class CLIError(PhosError):
    """An error the user can fix; the message is printed as one line and the command exits with `code`."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = code

    @property
    def code(self) -> int:
        return self.exit_code


def json_or_text(text: str) -> Any:
    """A flag's VALUE: its JSON reading when it parses (true, 3, 1.5, "x", {...}), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` flags → fsspec storage options. VALUE is JSON when it parses (true, 3, "x", {...}), else
    the text itself; dots in KEY nest (`client_kwargs.endpoint_url=…` → {"client_kwargs": {...}}).
    Raises CLIError for a pair without '=', an empty key part, or a key given twice."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise CLIError(f"--storage-option {pair!r}: expected KEY=VALUE (KEY may be dotted: a.b=VALUE)")
        value = json_or_text(text)
        node = options
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CLIError(f"--storage-option {pair!r}: {part!r} is already set to a value")
        if parts[-1] in node:
            raise CLIError(f"--storage-option {pair!r}: {key!r} is given twice")
        node[parts[-1]] = value
    return options


def printable(text: str) -> str:
    """One terminal line: control characters (a newline in a file name) shown as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
