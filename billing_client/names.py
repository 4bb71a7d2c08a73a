"""Task names: the public contract. Producers ``send_task`` by these strings; the processor
registers its tasks under them (``tasks.names`` re-exports this module)."""

CHARGE_GENERATION = "billing.charge_generation"
CHARGE_ASSISTANT = "billing.charge_assistant"
GET_STATE = "billing.get_state"
GET_LEDGER = "billing.get_ledger"
GRANT_CREDITS = "billing.grant_credits"
ACTIVATE_SUBSCRIPTION = "billing.activate_subscription"
REFUND = "billing.refund"
RESET_DUE_LIMITS = "billing.reset_due_limits"
SYNC_TIER_LIMITS = "billing.sync_tier_limits"
AUDIT = "billing.audit"
