"""What Flower, task events and logs may show of a billing task's arguments: ``meta`` (payment
references, user data) hidden, in a batch's items too. Shared by the producer's side
(``billing_client``) and the worker's (``tasks.request``)."""

from __future__ import annotations

from typing import Any

HIDDEN = "<hidden>"
# Arguments that may carry payment references or user data: never shown in events or logs.
SENSITIVE = frozenset({"meta"})


def masked(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments with every sensitive one hidden, in a batch's items too."""
    return {
        k: (
            HIDDEN
            if k in SENSITIVE and v is not None
            else [masked(i) if isinstance(i, dict) else i for i in v]
            if isinstance(v, list)
            else v
        )
        for k, v in kwargs.items()
    }


def has_sensitive(kwargs: dict[str, Any]) -> bool:
    return any(
        (k in SENSITIVE and v is not None)
        or (isinstance(v, list) and any(isinstance(i, dict) and has_sensitive(i) for i in v))
        for k, v in kwargs.items()
    )
