"""Generated messages: whatever a producer sends, the answer is a documented result, a 422
writes nothing, and the worker goes on serving."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import db
from tests.conftest import count_rows
from worker import app

USER = 4242
TASKS = [
    "billing.charge_generation",
    "billing.charge_assistant",
    "billing.grant_credits",
    "billing.activate_subscription",
    "billing.refund",
    "billing.get_state",
    "billing.get_ledger",
    "billing.audit",
    "billing.reserve_generation",
    "billing.reserve_assistant",
    "billing.capture",
    "billing.release",
    "billing.expire_holds",
    "billing.publish_events",
    "billing.announce_subscriptions",
    "billing.prune_events",
    "billing.charge_batch",
    "billing.reserve_batch",
]
FIELDS = [
    "charges",
    "reserves",
    "include_state",
    "operation",
    "user_id",
    "idempotency_key",
    "cost",
    "meta",
    "amount",
    "tier",
    "days",
    "reason",
    "limit",
    "cursor",
    "ttl_seconds",
    "bogus",
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=300),
    st.just(USER),
    st.just("basic"),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
messages = st.tuples(
    st.sampled_from(TASKS),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
    st.lists(json_scalars, max_size=2),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(message=messages)
def test_generated_messages_get_documented_answers(worker, engine, accounts, message):
    task, kwargs, args = message
    db.truncate_all(engine)
    accounts.create(id=USER, balance_credits=0)

    result = app.send_task(task, args=args, kwargs=kwargs).get(timeout=30)

    assert isinstance(result, dict) and isinstance(result["ok"], bool)
    assert result["code"] in (200, 402, 404, 409, 422)
    for item in result.get("results", []):  # a batch: every item answered as a message would be
        assert isinstance(item, dict) and item["code"] in (200, 402, 404, 409, 422)
    if result["code"] == 422:
        assert result["error"] == "invalid_request"
        assert result["field"] in [*FIELDS, "args"]
        assert count_rows(engine, "billing_requests") == 0
        assert count_rows(engine, "credits_ledger") == 0
        assert count_rows(engine, "billing_holds") == 0
    # The worker is still there for the next, good message.
    assert worker.state(USER)["code"] == 200
