"""Task names: the public contract. Producers ``send_task`` by these strings; the processor
registers its tasks under them (``tasks.names`` re-exports this module)."""

CHARGE_GENERATION = "billing.charge_generation"
CHARGE_ASSISTANT = "billing.charge_assistant"
# Up to 100 charges (or reserves) in one message, each answered as its own message would be.
CHARGE_BATCH = "billing.charge_batch"
RESERVE_BATCH = "billing.reserve_batch"
# Opens an account: on the public queue for role "user", on the admin queue only for "admin"
# (an admin passes free).
OPEN_ACCOUNT = "billing.open_account"
GET_STATE = "billing.get_state"
GET_LEDGER = "billing.get_ledger"
GRANT_CREDITS = "billing.grant_credits"
VOID_GRANT = "billing.void_grant"
ACTIVATE_SUBSCRIPTION = "billing.activate_subscription"
REFUND = "billing.refund"
RESET_DUE_LIMITS = "billing.reset_due_limits"
SYNC_TIER_LIMITS = "billing.sync_tier_limits"
AUDIT = "billing.audit"
RESERVE_GENERATION = "billing.reserve_generation"
RESERVE_ASSISTANT = "billing.reserve_assistant"
CAPTURE = "billing.capture"
RELEASE = "billing.release"
EXPIRE_HOLDS = "billing.expire_holds"
EXPIRE_GRANTS = "billing.expire_grants"
PUBLISH_EVENTS = "billing.publish_events"
ANNOUNCE_SUBSCRIPTIONS = "billing.announce_subscriptions"
PRUNE_EVENTS = "billing.prune_events"

# Tasks that mint or move money outside a job, and the back office's jobs: routed to
# BILLING_ADMIN_QUEUE, and refused (403 forbidden_queue) when they arrive on any other queue.
PRIVILEGED = frozenset(
    {GRANT_CREDITS, VOID_GRANT, ACTIVATE_SUBSCRIPTION, REFUND, SYNC_TIER_LIMITS, AUDIT}
)

# A message header: when the producer sent it (Unix time), for the workers' queue-wait metric.
SENT_AT_HEADER = "billing_sent_at"
