"""Task names: the public contract, defined once in the Celery-only client package."""

from billing_client.names import (
    ACTIVATE_SUBSCRIPTION,
    AUDIT,
    CAPTURE,
    CHARGE_ASSISTANT,
    CHARGE_GENERATION,
    EXPIRE_HOLDS,
    GET_LEDGER,
    GET_STATE,
    GRANT_CREDITS,
    REFUND,
    RELEASE,
    RESERVE_ASSISTANT,
    RESERVE_GENERATION,
    RESET_DUE_LIMITS,
    SYNC_TIER_LIMITS,
)

__all__ = [
    "ACTIVATE_SUBSCRIPTION",
    "AUDIT",
    "CAPTURE",
    "CHARGE_ASSISTANT",
    "CHARGE_GENERATION",
    "EXPIRE_HOLDS",
    "GET_LEDGER",
    "GET_STATE",
    "GRANT_CREDITS",
    "REFUND",
    "RELEASE",
    "RESERVE_ASSISTANT",
    "RESERVE_GENERATION",
    "RESET_DUE_LIMITS",
    "SYNC_TIER_LIMITS",
]
