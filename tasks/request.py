"""The worker-side request: what Flower and the logs show of a task's arguments."""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from celery.worker.request import Request

from billing.core.settings import get_settings
from billing_client.masking import has_sensitive, masked_kwargs

logger = logging.getLogger(__name__)

# Celery's part of a message body after the arguments: the tasks a worker sends when this one
# ends. Nothing else belongs there.
LINKS = ("callbacks", "errbacks", "chain", "chord")


class BillingRequest(Request):
    """Masks ``meta`` whatever the producer put in its kwargsrepr header, and keeps of the
    body's third part only what a producer may ask of this worker there."""

    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        if self._payload is not self._Request__payload:
            # The pool process takes the kept body as it is, instead of decoding the message.
            self._body = self._payload
            self._decoded = True
            self._content_type = self._content_encoding = None

    @cached_property
    def _payload(self) -> Any:
        """Celery merges the body's third part into the task's request (``**embed``): there a
        producer could set the ``delivery_info`` or ``is_eager`` a privileged task is judged
        by, and with links make this worker send tasks of its choosing, privileged ones to
        the admin queue. Links are kept from the admin queue only; nothing else is kept."""
        payload = self._Request__payload
        args, kwargs, embed = payload
        from_admin = self._delivery_info.get("routing_key") == get_settings().admin_queue
        allowed = LINKS if from_admin else ()
        if embed is None or (
            isinstance(embed, dict)
            and all(k in LINKS and (k in allowed or not v) for k, v in embed.items())
        ):
            return payload  # as Celery sends it
        kept = {k: embed[k] for k in allowed if isinstance(embed, dict) and embed.get(k)}
        dropped = sorted(set(embed) - set(kept)) if isinstance(embed, dict) else embed
        logger.warning("task %s[%s]: dropped from its body: %.200r", self._type, self.id, dropped)
        return (args, kwargs, kept)

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
