"""A poison message for the dead-letter test: a task that kills the pool process running it,
every time it runs (as a message that crashes its interpreter or runs it out of memory
would). It counts its runs in Redis before it dies."""

from __future__ import annotations

import os
import signal

import redis

from tests.services import REDIS_URL
from worker import app

POISON_TASK = "tests.poison"
RUNS_KEY = "billing-test:poison-runs"


@app.task(name=POISON_TASK)
def poison(**_kwargs: object) -> None:
    redis.Redis.from_url(REDIS_URL).incr(RUNS_KEY)
    os.kill(os.getpid(), signal.SIGKILL)
