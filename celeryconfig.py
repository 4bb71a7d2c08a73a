"""The one place the Celery app is configured. Values come from the BILLING_* settings."""

from billing.core.settings import get_settings
from billing_client import rabbitmq
from billing_client.names import PRIVILEGED

_settings = get_settings()

broker_url = _settings.effective_broker_url()
result_backend = _settings.effective_result_backend()
broker_connection_retry_on_startup = True

task_default_queue = _settings.queue
# Exact names first: the privileged tasks go to the admin queue, every other one to the
# public queue (billing_client.names.PRIVILEGED).
task_routes = {
    **{name: {"queue": _settings.admin_queue} for name in sorted(PRIVILEGED)},
    "billing.*": {"queue": _settings.queue},
}
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# At-least-once delivery: a message is acknowledged only after its task finished, and one a
# dying worker held goes back to the queue. The effect stays exactly-once because the
# idempotency key is unique in the database.
task_acks_late = True
# A child stuck in one task longer than this is killed by the pool (the set-based jobs carry
# their own, longer limit); the database's own timeouts release its locks well before.
task_time_limit = _settings.task_time_limit_seconds
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# Redis redelivers an unacknowledged message after this many seconds: it must be longer than
# any task plus all of its retries, or a slow charge runs twice (harmless, but wasted).
# (kombu's SQLAlchemy transport of the embedded default hands these to create_engine instead.)
broker_transport_options = (
    {"visibility_timeout": _settings.visibility_timeout}
    if broker_url.startswith(("redis", "rediss"))
    else {}
)
if rabbitmq.is_amqp(broker_url):
    # RabbitMQ: quorum queues with a delivery limit and the dead-letter queue, topic exchanges
    # for native delayed delivery, publisher confirms (billing_client.rabbitmq). Its
    # consumer_timeout plays the visibility timeout's part (docs/deployment.md: Brokers).
    task_queues = rabbitmq.task_queues(
        _settings.queue, _settings.admin_queue, _settings.delivery_limit
    )
    task_create_missing_queue_type = rabbitmq.MISSING_QUEUE_TYPE
    broker_transport_options = rabbitmq.TRANSPORT_OPTIONS
result_backend_transport_options = {"retry_policy": {"timeout": 5.0}}
# A result that cannot be stored while Redis restarts is retried, not lost with the task.
result_backend_always_retry = True
result_backend_max_retries = 30
result_expires = 7 * 24 * 3600
# Not result_extended: it would copy every task's kwargs, `meta` (payment references) included,
# into the result for a week, and make every stored result of a charge twice as large.
result_extended = False

# Flower and operators see every billing task from sent to done: its task-started event comes
# from the worker whatever task_track_started says; that only adds a STARTED result to the
# backend (BILLING_TRACK_STARTED, off: docs/benchmarks.md prices it).
worker_send_task_events = _settings.task_events
task_send_sent_event = _settings.task_events
task_track_started = _settings.track_started

worker_hijack_root_logger = False

# Celery beat: exactly one per deployment; a second one stands by on the beat lock.
beat_scheduler = "worker.beat:SingleBeatScheduler"
beat_max_interval = 10
beat_schedule = {
    "reset-due-limits": {
        "task": "billing.reset_due_limits",
        "schedule": _settings.reset_interval_seconds,
        # A run still queued when the next is due is dropped: the next one does its work.
        "options": {"expires": _settings.reset_interval_seconds},
    },
    "expire-holds": {
        "task": "billing.expire_holds",
        "schedule": _settings.hold_sweep_seconds,
        "options": {"expires": _settings.hold_sweep_seconds},
    },
    # Grants of accounts nobody touches: every movement expires its account's due grants first.
    "expire-grants": {
        "task": "billing.expire_grants",
        "schedule": _settings.grant_sweep_seconds,
        "options": {"expires": _settings.grant_sweep_seconds},
    },
    # The relay's safety net: events a crash left unpublished after their commit.
    "publish-events": {
        "task": "billing.publish_events",
        "schedule": _settings.events_sweep_seconds,
        "options": {"expires": _settings.events_sweep_seconds},
    },
    "announce-subscriptions": {
        "task": "billing.announce_subscriptions",
        "schedule": _settings.subscription_sweep_seconds,
        "options": {"expires": _settings.subscription_sweep_seconds},
    },
    # The ledger against the balances: its mismatches are the metric an alert watches.
    "audit": {
        "task": "billing.audit",
        "schedule": _settings.audit_interval_seconds,
        "options": {"expires": _settings.audit_interval_seconds},
    },
    "prune-events": {
        "task": "billing.prune_events",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    },
}
