"""Charges full and lean, and in batches, against the floors, in one run.

In alternated rounds (events on): the plain Celery floor (``bench.bare``, its own worker); the
billing app's no-op; generation charges with the full answer; the same with
``include_state=False``; and ``billing.charge_batch`` messages of 10 and of 100 charges. Every
figure is charges (or no-ops) per second, a batch's counted per charge, from the first send to
the last result stored; ``vs bare`` is the median over rounds of each stream's rate over the
plain floor's in the same round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import throughput as tp

Messages = list[tuple[str, dict[str, Any]]]


def batches(charges: Messages, size: int) -> Messages:
    """The same charges, ``size`` to a message."""
    items = [
        {**kwargs, "operation": name.removeprefix("billing.charge_")} for name, kwargs in charges
    ]
    return [
        ("billing.charge_batch", {"charges": items[i : i + size], "include_state": False})
        for i in range(0, len(items), size)
    ]


def lean(charges: Messages) -> Messages:
    return [(name, {**kwargs, "include_state": False}) for name, kwargs in charges]


def measure(
    app,
    noops: Callable[[int], Messages],
    charges: Callable[[int], Messages],
    tasks: int,
    repeat: int,
    concurrency: int,
    log_dir,
) -> dict[str, Any]:
    from bench import bare

    streams: dict[str, Callable[[], tuple[Messages, int]]] = {
        # In this order in every round: the lean charges' pair with the plain floor is the
        # adjacent one (their target is against it).
        "bare": lambda: (bare.noops(tasks), 1),
        "charges_lean": lambda: (lean(charges(tasks)), 1),
        "charges": lambda: (charges(tasks), 1),
        "floor": lambda: (noops(tasks), 1),
        "batch_10": lambda: (batches(charges(tasks), 10), 10),
        "batch_100": lambda: (batches(charges(tasks * 5), 100), 100),
    }
    runs: dict[str, list[tp.StreamResult]] = {name: [] for name in streams}
    with tp.bare_workers(concurrency, log_dir), tp.workers(app, {}, concurrency, log_dir):
        tp.run_stream(app, noops(200))  # warm up: connections, prepared plans
        tp.run_stream(app, charges(200))
        tp.bare_stream(200)
        for _ in range(repeat):
            for name, make in streams.items():
                messages, size = make()
                if name == "bare":
                    result = tp.run_stream(bare.app, messages, queue=bare.QUEUE)
                else:
                    result = tp.run_stream(app, messages)
                # Counted per charge: a batch message stands for ``size`` of them.
                runs[name].append(tp.StreamResult(result.tasks * size, result.seconds, []))
    return {
        name: {
            "per_s": tp.median_of_rates(results),
            "size": streams[name]()[1],
            "vs_bare": tp.pair_ratios(results, runs["bare"]),
            "vs_charges": tp.pair_ratios(results, runs["charges"]),
        }
        for name, results in runs.items()
    }


def lines(r: dict[str, Any]) -> list[str]:
    floor = r["floor"]["per_s"]["median"]
    out = [
        f"{'stream':<14} {'per s (per charge)':>19} {'min-max':>15} {'vs bare':>8}"
        f" {'vs floor':>9} {'vs charges':>11}"
    ]
    for name, v in r.items():
        rate = v["per_s"]
        out.append(
            f"{name:<14} {rate['median']:>19.1f} {rate['min']:>7.1f}-{rate['max']:<7.1f}"
            f" {v['vs_bare']['median']:>8.2f} {rate['median'] / floor:>9.2f}"
            f" {v['vs_charges']['median']:>11.2f}"
        )
    return out
