"""The worker-side request: what Flower and the logs show of a task's arguments."""

from __future__ import annotations

from typing import Any

from celery.utils.saferepr import saferepr
from celery.worker.request import Request

from billing_client.masking import has_sensitive, masked


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
