"""Task names: the public contract. Producers ``send_task`` by these strings."""

CHARGE_GENERATION = "billing.charge_generation"
CHARGE_ASSISTANT = "billing.charge_assistant"
GET_STATE = "billing.get_state"
GET_LEDGER = "billing.get_ledger"
