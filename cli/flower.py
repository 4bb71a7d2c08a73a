"""``billing flower``: Flower, with ``meta`` hidden in everything it keeps and shows.

The workers mask ``meta`` in the events they send, but Flower keeps whatever event it applied
last, and not every event is the workers': a producer that sends ``task-sent`` events
(``task_send_sent_event``) reports its own repr of the arguments, and on RabbitMQ that event
can reach Flower after the worker's (its state then takes the producer's repr). Workers also
answer Flower's ``inspect reserved`` and ``scheduled`` with the arguments unmasked. So every
event and every inspect answer is masked here, on its way into Flower's state, whatever sent
it and in whatever order it comes: the task list, the task and worker pages, the search and
the API all read that state.

Run as ``python -m cli.flower -A worker flower [flower options]``, like ``celery``.
"""

from __future__ import annotations

import sys
from functools import wraps
from typing import Any

from billing_client.masking import masked_args_repr, masked_repr

# The inspect answers that list requests (``Request.info()``), and where each has them.
_REQUEST_LISTS = ("active", "reserved", "scheduled")


def masked_event(event: dict[str, Any]) -> dict[str, Any]:
    """A task event with its arguments and result masked (other events are left as they are)."""
    if not str(event.get("type", "")).startswith("task-"):
        return event
    shown = dict(event)
    for field, mask in (
        ("kwargs", masked_repr),
        ("result", masked_repr),
        ("args", masked_args_repr),
    ):
        if field in shown:
            shown[field] = mask(shown[field])
    return shown


def masked_request(info: Any) -> Any:
    """One entry of an inspect answer: a request's info, or a scheduled one's wrapper."""
    if not isinstance(info, dict):
        return info
    shown = dict(info)
    if isinstance(shown.get("request"), dict):  # ``scheduled``: {eta, priority, request}
        shown["request"] = masked_request(shown["request"])
    if "kwargs" in shown:
        shown["kwargs"] = masked_repr(shown["kwargs"])
    if "args" in shown:
        shown["args"] = masked_args_repr(shown["args"])
    return shown


def install() -> None:
    """Patch Flower's two doors for task data: events into its state, inspect answers into
    its worker pages. Patched on the classes so that every instance, a state restored from
    ``--persistent`` included, goes through them."""
    from flower.events import EventsState
    from flower.inspector import Inspector

    if getattr(EventsState.event, "billing_masked", False):
        return
    apply_event = EventsState.event
    on_update = Inspector._on_update

    @wraps(apply_event)
    def event(self: EventsState, event: dict[str, Any]) -> Any:
        return apply_event(self, masked_event(event))

    @wraps(on_update)
    def _on_update(self: Inspector, workername: str, method: str, response: Any) -> Any:
        if method in _REQUEST_LISTS and isinstance(response, list):
            response = [masked_request(info) for info in response]
        return on_update(self, workername, method, response)

    event.billing_masked = True  # type: ignore[attr-defined]
    EventsState.event = event  # type: ignore[method-assign]
    Inspector._on_update = _on_update  # type: ignore[method-assign]


def main() -> None:
    install()
    from celery.__main__ import main as celery_main

    sys.argv[0] = "celery"
    celery_main()


if __name__ == "__main__":
    main()
