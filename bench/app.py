"""The benchmark's Celery app: the billing app itself plus a no-op task, the floor."""

from worker import app


@app.task(name="bench.noop")
def noop(**_kwargs: object) -> dict[str, object]:
    return {"ok": True, "code": 200}


__all__ = ["app"]
