"""The worker-side request: what Flower and the logs show of a task's arguments."""

from __future__ import annotations

from typing import Any

from celery.utils.saferepr import saferepr
from celery.worker.request import Request

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


def masked_kwargs(kwargs: Any) -> str:
    if not isinstance(kwargs, dict):
        return f"<{type(kwargs).__name__}>"
    return saferepr(masked(kwargs), maxlen=1024)


class BillingRequest(Request):
    """Masks ``meta`` whatever the producer put in its kwargsrepr header."""

    @property
    def kwargsrepr(self) -> str:
        kwargs = self.kwargs
        nothing_to_hide = isinstance(kwargs, dict) and not has_sensitive(kwargs)
        # Nothing to hide: the producer's own repr is as good as ours, and already made.
        if nothing_to_hide and self._kwargsrepr:
            return self._kwargsrepr
        return masked_kwargs(kwargs)

    @property
    def argsrepr(self) -> str:
        args = self.args
        return f"<{len(args)} positional>" if args else "()"
