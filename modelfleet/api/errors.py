"""Turn pydantic validation errors into messages that name the field and the fix."""

from __future__ import annotations

from pydantic import ValidationError

VALUE_ERROR_PREFIX = "Value error, "


def _location(loc: tuple[int | str, ...], root: str) -> str:
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def format_validation_error(error: ValidationError, root: str = "spec") -> str:
    """One line per problem, e.g. ``spec.clients[0].rank: Input should be ≥ 1 (got 0)``.

    Cross-field checks already name their fields, so their location is not
    repeated in front of them.
    """
    lines = []
    for item in error.errors(include_url=False):
        message = item["msg"]
        if message.startswith(VALUE_ERROR_PREFIX):
            message = message[len(VALUE_ERROR_PREFIX) :]
            if message.startswith(root):
                lines.append(message)
                continue
        where = _location(tuple(item["loc"]), root)
        got = item.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        if item["type"] == "missing":
            shown = ""
        lines.append(f"{where}: {message}{shown}")
    return "; ".join(lines)
