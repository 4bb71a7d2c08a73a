"""A beat that runs the schedule only while it holds the beat lock.

Exactly one beat should run per deployment. If a second one is started by mistake (or as a
standby), it finds the lock taken and sends nothing; it takes over within the lock's TTL if
the first one dies. The lock lives in Redis, shared by every machine: the broker's when the
broker is Redis, the result backend's when the broker is RabbitMQ; with no Redis at all, in
a file under BILLING_DATA_DIR (the embedded default is single-machine).
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from typing import IO, Any, Protocol

import redis
from celery.beat import PersistentScheduler
from redis.exceptions import LockError, RedisError

from billing.core.settings import get_settings

logger = logging.getLogger("billing.beat")

LOCK_KEY = "billing:beat-lock"
LOCK_TTL = 60.0  # seconds; the holder renews every LOCK_TTL / 3


class BeatLock(Protocol):
    def hold(self) -> bool: ...

    def release(self) -> None: ...


class RedisBeatLock:
    def __init__(self, url: str, key: str = LOCK_KEY, ttl: float = LOCK_TTL) -> None:
        self._lock = redis.Redis.from_url(url, socket_timeout=5).lock(
            key, timeout=ttl, thread_local=False
        )

    def hold(self) -> bool:
        try:
            if self._lock.local.token is not None:
                self._lock.reacquire()
                return True
            return bool(self._lock.acquire(blocking=False, token=uuid.uuid4().hex))
        except LockError:  # expired and taken by another beat
            self._lock.local.token = None
            return False
        except RedisError as exc:
            logger.warning("beat lock unavailable (%s); not scheduling until it is back", exc)
            return False

    def release(self) -> None:
        try:
            if self._lock.local.token is not None:
                self._lock.release()
        except (LockError, RedisError):
            pass


class FileBeatLock:
    def __init__(self, path: os.PathLike[str] | str) -> None:
        self._path = path
        self._file: IO[str] | None = None

    def hold(self) -> bool:
        if self._file is not None:
            return True
        handle = open(self._path, "a")  # noqa: SIM115 - held open for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def lock_for(broker_url: str, result_backend: str | None = None) -> BeatLock:
    for url in (broker_url, result_backend or ""):
        if url.startswith(("redis://", "rediss://")):
            return RedisBeatLock(url)
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return FileBeatLock(settings.data_dir / "beat.lock")


class SingleBeatScheduler(PersistentScheduler):
    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self._beat_lock = lock_for(app.conf.broker_url, app.conf.result_backend)
        self._standing_by = False
        super().__init__(app, *args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._beat_lock.hold():
            if not self._standing_by:
                logger.warning("another beat holds the beat lock; standing by")
                self._standing_by = True
            return LOCK_TTL / 3
        if self._standing_by:
            logger.warning("beat lock acquired; this beat now runs the schedule")
            self._standing_by = False
        return min(super().tick(*args, **kwargs), LOCK_TTL / 3)

    def close(self) -> None:
        super().close()
        self._beat_lock.release()
