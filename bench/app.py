"""The benchmark's Celery app: the billing app itself plus a no-op task, the floor."""

from worker import app


@app.task(name="bench.noop")
def noop(**_kwargs: object) -> dict[str, object]:
    return {"ok": True, "code": 200}


__all__ = ["app"]


_CHARGE_SIZED = {
    "ok": True, "code": 200, "source": "credits", "amount": 10, "idempotency_key": "x" * 24,
    "replayed": False, "ledger_id": 123456,
    "state": {"user_id": 1001, "role": "user",
              "subscription": {"type": None, "active": False, "ends_at": None, "ops_limit": 0,
                               "ops_used": 0, "ops_remaining": 0,
                               "resets_at": "2026-12-26T13:24:23.404760+00:00"},
              "freemium": {"limit": 5, "used": 5, "remaining": 0,
                           "resets_at": "2026-12-26T13:24:23.404760+00:00"},
              "credits": {"balance": 70}},
}  # fmt: skip


@app.task(name="bench.noop_charge_sized")
def noop_charge_sized(**_kwargs: object) -> dict[str, object]:
    """A no-op whose result is as large as a charge's: what the result alone costs."""
    return _CHARGE_SIZED
