"""Every per-task piece of the billing worker, priced alone against the plain Celery floor.

A piece is added to ``bench.bare``'s app and no-op (``BENCH_BARE_PIECE``), in a worker of its
own on the queue ``piece``; the floor's worker runs beside it on ``bare``. In each round a
stream goes to one and then the other (the order swapped every round), and a piece's price is
the median over rounds of its rate over the floor's: 1.00 costs nothing, 0.90 takes 10% of
the floor's throughput. Each piece is what the billing worker runs, imported from it:

- configuration: ``task_track_started``; the result backend's retry policy; ``result_extended``
  (off in the billing app, priced so the reason stays measured); task events, priced as the
  floor with them off;
- ``request``: ``tasks.request.BillingRequest`` (kwargs masking, the body's third part);
- ``metrics``: the counts and durations every task records, metrics port unset, and
  ``metrics_port``: the same with a port (prometheus-client's multiprocess files);
- ``queue_wait``: the sent-at header, stamped by the producer, read and observed (port set);
- ``outcome_log``: the JSON outcome line (``tasks.base.BillingTask._log_line``);
- ``result_size``: a charge's full result (with the account's state) instead of a small dict;
- ``events_check``: the after-commit check for balance events to publish;
- ``pool_checkout``: a store on a pooled connection and back (``tasks.base`` run_on_store,
  which includes the events check), with no statement;
- ``round_trips``: the same, plus the two round trips any charge needs (lock and read, then
  write and commit: ``bench.app``'s locked insert).
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

OK = {"ok": True, "code": 200}

# name -> what the piece is, in the bench's table
PIECES = {
    "track_started": "task_track_started (a STARTED result per task)",
    "backend_retry": "result-backend retry policy",
    "result_extended": "result_extended",
    "events_off": "task events off (events' price: the inverse)",
    "request": "BillingRequest",
    "metrics": "metrics, no port",
    "metrics_port": "metrics with a port",
    "queue_wait": "queue-wait header, observed",
    "outcome_log": "outcome log line",
    "result_size": "a charge's full result",
    "events_check": "after-commit events check",
    "pool_checkout": "pool checkout and return",
    "round_trips": "pool checkout + two round trips",
}
CONFIG_PIECES = {"track_started", "backend_retry", "result_extended", "events_off"}
# Pieces that observe into the metrics: their worker gets a metrics port.
WITH_PORT = {"metrics_port", "queue_wait"}


def _configure(app: Any, piece: str) -> None:
    import celeryconfig  # the billing app's own values, not copies

    if piece == "track_started":
        app.conf.task_track_started = True
    elif piece == "backend_retry":
        app.conf.update(
            result_backend_transport_options=celeryconfig.result_backend_transport_options,
            result_backend_always_retry=celeryconfig.result_backend_always_retry,
            result_backend_max_retries=celeryconfig.result_backend_max_retries,
        )
    elif piece == "result_extended":
        app.conf.result_extended = True
    elif piece == "events_off":
        app.conf.worker_send_task_events = False
        app.conf.task_send_sent_event = False


def _body(piece: str) -> Callable[[Any, dict[str, Any]], dict[str, Any]]:
    """The piece's work in the task, as the billing worker does it."""
    if piece in ("metrics", "metrics_port"):
        from worker import metrics

        def counted(task: Any, _kwargs: dict[str, Any]) -> dict[str, Any]:
            started = time.perf_counter()
            metrics.counted(task.name, OK)
            metrics.timed(task.name, time.perf_counter() - started, None)
            return OK

        return counted
    if piece == "queue_wait":
        from prometheus_client import Histogram

        from worker import metrics

        wait = Histogram(
            "bench_queue_wait_seconds", "the wait", ["task"], buckets=metrics.WAIT_BUCKETS
        )

        def waited(task: Any, _kwargs: dict[str, Any]) -> dict[str, Any]:
            sent_at = getattr(task.request, metrics.SENT_AT_HEADER, None)
            if isinstance(sent_at, int | float):
                wait.labels(task.name).observe(max(time.time() - sent_at, 0.0))
            return OK

        return waited
    if piece == "outcome_log":
        from tasks.base import BillingTask

        def logged(task: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            BillingTask._log_line(task, OK, kwargs, 0.001)
            return OK

        return logged
    if piece == "result_size":
        result = charge_result()
        return lambda _task, _kwargs: result
    if piece == "events_check":

        class Store:
            def __init__(self) -> None:
                self.event_accounts: set[int] = set()

        def checked(_task: Any, _kwargs: dict[str, Any]) -> dict[str, Any]:
            store = Store()
            if store.event_accounts:
                raise AssertionError("no events here")
            return OK

        return checked
    if piece in ("pool_checkout", "round_trips"):
        from billing.core.settings import get_settings
        from billing.core.validation import ChargeArgs
        from tasks.base import BillingTask

        def handler(store: Any, parsed: ChargeArgs, _settings: Any) -> dict[str, Any]:
            if piece == "round_trips":
                from bench.app import _locked_insert

                _locked_insert(store.conn, parsed)
            return OK

        def on_store(_task: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            parsed = ChargeArgs.parse((), kwargs) if kwargs else None
            return BillingTask.run_on_store(handler, parsed, get_settings())

        return on_store
    return lambda _task, _kwargs: OK


def charge_result() -> dict[str, Any]:
    """A generation charge's result with the account's state, as a worker returns it."""
    from bench.app import _charge_in_memory
    from billing.core.settings import get_settings
    from billing.core.validation import ChargeArgs

    args = ChargeArgs.parse((), {"user_id": 1, "idempotency_key": "bench-result-size"})
    return dict(_charge_in_memory(args, get_settings()))


def install(app: Any, piece: str) -> None:
    """``bench.bare``'s app and no-op, plus ``piece``."""
    if piece not in PIECES:
        raise ValueError(f"unknown piece {piece!r}; one of {', '.join(PIECES)}")
    _configure(app, piece)
    body = _body(piece)
    options = {"Request": "tasks.request:BillingRequest"} if piece == "request" else {}

    @app.task(name="bare.noop", bind=True, shared=False, **options)
    def noop(self: Any, **kwargs: Any) -> dict[str, Any]:
        return body(self, kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(
    tasks: int,
    repeat: int,
    concurrency: int,
    log_dir: Any,
    charge_kwargs: Callable[[int], list[dict[str, Any]]],
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Each piece's rate against the floor's, in alternated rounds; ``charge_kwargs(n)``: the
    arguments of n charges (user and fresh key), for the pieces that read them."""
    from bench import bare
    from bench import throughput as tp
    from billing_client.names import SENT_AT_HEADER

    app = bare.app

    def stream(queue: str, piece: str | None) -> tp.StreamResult:
        kwargs = charge_kwargs(tasks) if piece in ("round_trips", "pool_checkout") else None
        messages = [("bare.noop", k) for k in kwargs] if kwargs else bare.noops(tasks)
        headers = (lambda: {SENT_AT_HEADER: time.time()}) if piece == "queue_wait" else None
        events = piece != "events_off"
        app.conf.task_send_sent_event = events
        try:
            return tp.run_stream(app, messages, queue=queue, headers=headers)
        finally:
            app.conf.task_send_sent_event = True

    out: dict[str, Any] = {"tasks": tasks, "pieces": {}}
    with tp.bare_workers(concurrency, log_dir):
        stream(bare.QUEUE, None)  # warm up
        for piece in only or list(PIECES):
            env = {"BENCH_BARE_PIECE": piece}
            if piece in WITH_PORT:
                env["BILLING_METRICS_PORT"] = str(_free_port())
            with tp.bare_workers(concurrency, log_dir, env, queue="piece"):
                stream("piece", piece)  # warm up: connections, prepared plans
                ratios, rates = [], []
                for i in range(repeat):
                    order = [(bare.QUEUE, None), ("piece", piece)]
                    floor, with_piece = None, None
                    for queue, p in order if i % 2 == 0 else reversed(order):
                        result = stream(queue, p)
                        if p is None:
                            floor = result.rate
                        else:
                            with_piece = result.rate
                    assert floor is not None and with_piece is not None
                    ratios.append(with_piece / floor)
                    rates.append((floor, with_piece))
            out["pieces"][piece] = {
                "what": PIECES[piece],
                "ratio": statistics.median(ratios),
                "ratios": ratios,
                "floor_per_s": statistics.median(r[0] for r in rates),
                "piece_per_s": statistics.median(r[1] for r in rates),
            }
    return out


def lines(r: dict[str, Any]) -> list[str]:
    out = [
        f"each piece alone on the plain Celery floor ({r['tasks']} tasks a stream, medians of"
        " alternated pairs):",
        f"  {'piece':<16} {'what':<48} {'vs bare':>8} {'pairs':>22}",
    ]
    for name, v in r["pieces"].items():
        pairs = " ".join(f"{x:.2f}" for x in v["ratios"])
        out.append(f"  {name:<16} {v['what']:<48} {v['ratio']:>8.2f} {pairs:>22}")
    return out
