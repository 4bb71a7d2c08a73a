"""What Flower, task events and logs may show of a billing task's arguments: ``meta`` (payment
references, user data) hidden, in a batch's items too. Shared by the producer's side
(``billing_client``), the worker's (``tasks.request``) and Flower's (``cli.flower``)."""

from __future__ import annotations

import ast
import re
from typing import Any

from celery.utils.saferepr import saferepr

HIDDEN = "<hidden>"
# Arguments that may carry payment references or user data: never shown in events or logs.
SENSITIVE = frozenset({"meta"})


# Deeper than this, a value is hidden whole rather than walked (any producer sets the depth).
MAX_DEPTH = 32


def masked(kwargs: dict[Any, Any], depth: int = 0) -> dict[Any, Any]:
    """The arguments with every sensitive one hidden, at any depth (a batch's items too)."""
    return {
        k: HIDDEN if k in SENSITIVE and v is not None else _masked_value(v, depth + 1)
        for k, v in kwargs.items()
    }


def _masked_value(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH and isinstance(value, dict | list | tuple):
        return HIDDEN
    if isinstance(value, dict):
        return masked(value, depth)
    if isinstance(value, list | tuple):
        return type(value)(_masked_value(i, depth + 1) for i in value)
    return value


def has_sensitive(kwargs: dict[Any, Any], depth: int = 0) -> bool:
    return any(
        (k in SENSITIVE and v is not None) or _holds_sensitive(v, depth + 1)
        for k, v in kwargs.items()
    )


def _holds_sensitive(value: Any, depth: int) -> bool:
    if isinstance(value, dict | list | tuple) and depth > MAX_DEPTH:
        return True
    if isinstance(value, dict):
        return has_sensitive(value, depth)
    if isinstance(value, list | tuple):
        return any(_holds_sensitive(i, depth + 1) for i in value)
    return False


# What Flower shows of a repr it cannot read back (cut short, or not Python literals) that
# names a sensitive argument without hiding it.
UNREADABLE = "<hidden: arguments not shown>"
# A repr longer than this is not parsed: any producer can send one, and parsing is not free.
MAX_PARSED_REPR = 65_536
_SHOWN_VALUE = r"""(?:'<hidden>'|"<hidden>"|None\b|null\b)"""
_UNHIDDEN = re.compile(
    r"\b(?:"
    + "|".join(map(re.escape, sorted(SENSITIVE)))
    + r")\b['\"]?\s*[:=](?!\s*"
    + _SHOWN_VALUE
    + ")"
)


def masked_repr(value: Any, maxlen: int = 1024) -> Any:
    """A repr of a task's keyword arguments (or of its result) as an event or a worker
    reports it, with every sensitive argument hidden, whoever wrote it: a producer's
    ``task-sent`` event carries the producer's own ``kwargsrepr``."""
    if value is None:
        return None
    if isinstance(value, dict):
        return saferepr(masked(value), maxlen=maxlen)
    text = value if isinstance(value, str) else repr(value)
    parsed = _literal(text)
    if isinstance(parsed, dict):
        return saferepr(masked(parsed), maxlen=maxlen)
    return UNREADABLE if _UNHIDDEN.search(text) else text


def masked_args_repr(value: Any) -> Any:
    """Positional arguments, as the worker shows them: only how many (no billing task takes
    any, so whatever a producer put there is not shown)."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return f"<{len(value)} positional>" if value else "()"
    text = str(value)
    if re.fullmatch(r"<\d+ positional>", text):
        return text
    parsed = _literal(text)
    if isinstance(parsed, list | tuple):
        return f"<{len(parsed)} positional>" if parsed else "()"
    return "<positional>"


def _literal(text: str) -> Any:
    if len(text) > MAX_PARSED_REPR:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def masked_kwargs(kwargs: Any) -> str:
    """A message's kwargs as Flower, the logs and the dead letters show them: masked, or by
    type only when a foreign producer sent something else than an object."""
    if not isinstance(kwargs, dict):
        return f"<{type(kwargs).__name__}>"
    return masked_repr(kwargs)
