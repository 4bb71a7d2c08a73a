"""A client for producers: send billing tasks by name and read typed results.

It needs only Celery (and the broker's client library, e.g. ``redis``): no SQLAlchemy, no
worker code. Copy this one package into a producer, or install the project.

    from billing_client import BillingClient

    billing = BillingClient(broker_url="redis://127.0.0.1:6379/0",
                            result_backend="redis://127.0.0.1:6379/0")
    paid = billing.charge_generation(user_id=42, idempotency_key="fitting-job-8c1f")
    if paid.ok:
        ...

On RabbitMQ (``amqp://``) it declares the billing queues as the workers do and publishes
with confirms: a message the broker did not confirm raises NotConfirmed.

A BillingTimeout, BillingFailed or NotConfirmed (all OutcomeUnknown) means the outcome is
unknown, not that nothing happened: send the same request with the same key again, never a
new key.
"""

from billing_client import names
from billing_client.client import (
    BillingClient,
    BillingFailed,
    BillingResult,
    BillingTimeout,
    NotConfirmed,
    OutcomeUnknown,
)

__all__ = [
    "BillingClient",
    "BillingFailed",
    "BillingResult",
    "BillingTimeout",
    "NotConfirmed",
    "OutcomeUnknown",
    "names",
]
