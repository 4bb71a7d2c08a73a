"""Settings from the environment (prefix ``BILLING_``), read once per process."""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TIERS = {"basic": 30, "standard": 100, "premium": 300}
DEFAULT_TIER_ALIASES = {"pro": "standard"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    # Unset URLs fall back to the embedded default (SQLite files under data_dir).
    database_url: str | None = None
    broker_url: str | None = None
    result_backend: str | None = None
    data_dir: Path = Path(".billing-data")

    queue: str = "billing"
    # Tasks that mint or move money outside a job (grants, subscriptions, refunds) and the
    # back office's jobs go here; only the back office may push to it (docs/deployment.md,
    # Redis ACLs).
    admin_queue: str = Field(default="billing-admin", min_length=1)
    v4_enabled: bool = True
    ledger_enabled: bool = True

    freemium_limit: int = Field(default=5, ge=0)
    generation_cost: int = Field(default=10, gt=0, le=1_000_000)
    assistant_cost: int = Field(default=2, gt=0, le=1_000_000)
    reset_period_days: int = Field(default=30, gt=0)
    tiers: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_TIERS))
    tier_aliases: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TIER_ALIASES))

    # Retries of infrastructure failures (database unreachable, serialization failure).
    task_max_retries: int = Field(default=8, ge=0)
    # Must exceed the longest task plus all its retries, or Redis redelivers a running task.
    visibility_timeout: int = Field(default=3600, gt=0)
    # RabbitMQ: a message redelivered more often than this (each worker that died running it
    # puts it back) goes to the dead-letter queue, billing.dead (billing_client.rabbitmq).
    delivery_limit: int = Field(default=10, ge=1, le=1000)
    reset_interval_seconds: float = Field(default=900.0, gt=0)
    # A hold nobody captures or releases gives everything back after this long (a reserve may
    # ask for 1 s to 1 day); the beat's sweep looks for expired holds this often, and every
    # movement on an account expires its due holds first anyway.
    hold_ttl_seconds: int = Field(default=900, ge=1, le=86_400)
    hold_sweep_seconds: float = Field(default=30.0, gt=0)
    # Credit grants: ``credits.expiring`` is recorded once per grant this many days before its
    # ``expires_at``; the beat's sweep expires grants nobody's movement touched this often.
    credit_expiry_notice_days: float = Field(default=7, ge=0)
    grant_sweep_seconds: float = Field(default=60.0, gt=0)
    # Balance events (the outbox, ``billing.core.events``): recorded with the movement that caused
    # them, published as Celery task messages named events_task to events_queue right after
    # the commit; the beat's relay sweep publishes what a crash left behind, announces
    # subscriptions about to end and ended, and removes published events after the retention.
    events_enabled: bool = True
    events_queue: str = Field(default="billing-events", min_length=1)
    events_task: str = Field(default="billing_events.account_event", min_length=1)
    # credits.low fires when the balance falls below this; None: one generation's cost.
    low_credits_threshold: int | None = Field(default=None, ge=0)
    expiry_notice_days: float = Field(default=3.0, gt=0)
    events_retention_days: float = Field(default=7.0, gt=0)
    events_sweep_seconds: float = Field(default=5.0, gt=0)
    subscription_sweep_seconds: float = Field(default=60.0, gt=0)
    # Prometheus metrics: every worker serves /metrics on this port when it is set.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_address: str = "127.0.0.1"
    # Where the pool processes keep their counts; default: a fresh directory per worker.
    metrics_dir: Path | None = None
    audit_interval_seconds: float = Field(default=86_400.0, gt=0)
    # Bounds on how long one worker can hold or wait for an account's row lock (PostgreSQL
    # session settings of every worker connection, in milliseconds; 0 turns one off). A
    # worker frozen between a movement's two round trips loses its session, and its lock, after
    # the idle timeout; a movement that waits out the lock timeout is retried with backoff.
    db_lock_timeout_ms: int = Field(default=5_000, ge=0)
    db_statement_timeout_ms: int = Field(default=30_000, ge=0)
    db_idle_in_transaction_timeout_ms: int = Field(default=10_000, ge=0)
    # Celery's hard time limit of one run of a task: the pool kills a child stuck longer.
    task_time_limit_seconds: float = Field(default=120.0, gt=0)
    # The same for the set-based jobs (resets, tier sync, audit), which walk every account.
    sweep_time_limit_seconds: float = Field(default=3600.0, gt=0)
    # Task events feed Flower; off saves a broker message per task state change.
    task_events: bool = True
    # A STARTED result in the backend when a task starts: one more backend write and read per
    # task (about 15% of a plain worker's throughput, bench.pieces), for producers that poll
    # AsyncResult.state. Flower and the metrics see a task start from its task-started event.
    track_started: bool = False
    # "user:password[,user:password]" for Flower's basic auth; a secret, never logged.
    flower_basic_auth: str | None = Field(default=None, repr=False)

    @field_validator("flower_basic_auth")
    @classmethod
    def _credentials(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not all(
            user and password
            for user, _, password in (pair.partition(":") for pair in value.split(","))
        ):
            raise ValueError("BILLING_FLOWER_BASIC_AUTH must be user:password[,user:password]")
        return value

    @field_validator("tiers")
    @classmethod
    def _tiers_non_negative(cls, tiers: dict[str, int]) -> dict[str, int]:
        bad = {name: limit for name, limit in tiers.items() if limit < 0}
        if bad:
            raise ValueError(f"tier limits must be >= 0, got {bad}")
        return tiers

    @model_validator(mode="after")
    def _aliases_point_at_tiers(self) -> Settings:
        unknown = {a: t for a, t in self.tier_aliases.items() if t not in self.tiers}
        if unknown:
            raise ValueError(f"BILLING_TIER_ALIASES point at unknown tiers: {unknown}")
        return self

    @property
    def low_credits(self) -> int:
        if self.low_credits_threshold is not None:
            return self.low_credits_threshold
        return self.generation_cost

    @property
    def credit_expiry_notice(self) -> timedelta:
        """How long before a grant's ``expires_at`` its ``credits.expiring`` event goes."""
        return timedelta(days=self.credit_expiry_notice_days)

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self._data_path('billing.sqlite')}"

    def effective_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{self._data_path('broker.sqlite')}"

    def effective_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        return f"db+sqlite:///{self._data_path('results.sqlite')}"

    def _data_path(self, name: str) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir.resolve() / name

    def session_options(self) -> str:
        """The PostgreSQL session settings of a worker connection (libpq ``options``)."""
        return " ".join(
            f"-c {name}={value}"
            for name, value in (
                ("lock_timeout", self.db_lock_timeout_ms),
                ("statement_timeout", self.db_statement_timeout_ms),
                ("idle_in_transaction_session_timeout", self.db_idle_in_transaction_timeout_ms),
            )
        )

    def canonical_tier(self, name: str | None) -> str | None:
        if name is None:
            return None
        return self.tier_aliases.get(name, name)


@functools.cache
def get_settings() -> Settings:
    return Settings()


def reload_settings() -> Settings:
    """Drop the cached settings so the next read sees the environment as it is now."""
    get_settings.cache_clear()
    return get_settings()
