"""Task names: the public contract, defined once in the Celery-only client package."""

from billing_client.names import (
    ACTIVATE_SUBSCRIPTION,
    AUDIT,
    CHARGE_ASSISTANT,
    CHARGE_GENERATION,
    GET_LEDGER,
    GET_STATE,
    GRANT_CREDITS,
    REFUND,
    RESET_DUE_LIMITS,
    SYNC_TIER_LIMITS,
)

__all__ = [
    "ACTIVATE_SUBSCRIPTION",
    "AUDIT",
    "CHARGE_ASSISTANT",
    "CHARGE_GENERATION",
    "GET_LEDGER",
    "GET_STATE",
    "GRANT_CREDITS",
    "REFUND",
    "RESET_DUE_LIMITS",
    "SYNC_TIER_LIMITS",
]
