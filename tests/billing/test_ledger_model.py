"""Random sequences of every operation, checked step by step against a reference model.

The model is the contract in a few lines of Python; the system under test is the real worker,
PostgreSQL and Redis. Time moves by shifting the accounts' stored timestamps back, which for
them is the same as the clock moving forward.

Credit grants are modelled whole: each grant's remaining and status, the draw order, the
parts a charge or hold drew, and what comes back to which grant (or is written off at once
when its grant has closed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests import db
from tests.conftest import grant_rows, shift_clock

PERIOD = 30
DAY_SECONDS = 86_400
FREEMIUM = 2
TIERS = {"basic": 2, "standard": 4}
ALIASES = {"pro": "standard"}
COSTS = {"generation": 10, "assistant": 2}
USERS = (501, 502, 503)  # 503 is an admin
NOTICE_DAYS = 7  # BILLING_CREDIT_EXPIRY_NOTICE_DAYS, the default


@dataclass
class Account:
    admin: bool = False
    balance: int = 0
    sub_type: str | None = None
    sub_end: float | None = None
    sub_limit: int = 0
    sub_used: int = 0
    sub_reset: float = 0.0
    free_used: int = 0
    free_reset: float = 0.0
    # key -> {amount, remaining, expires (model days, None: never), priority, category,
    # status, seq}
    grants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def general(self) -> int:
        return self.balance - sum(
            g["remaining"] for g in self.grants.values() if g["status"] == "active"
        )

    def plan(self, amount: int) -> list[tuple[str | None, int]]:
        """What taking ``amount`` credits takes from each grant, in draw order."""

        def order(g: dict[str, Any]) -> tuple[Any, ...]:
            expires = g["expires"]
            never = expires is None
            return (g["priority"], never, math.inf if never else expires,
                    g["category"] == "paid", 1, g["seq"])  # fmt: skip

        slots = [
            (order(g), key, g["remaining"])
            for key, g in self.grants.items()
            if g["status"] == "active" and g["remaining"] > 0
        ]
        if self.general() > 0:
            slots.append(((50, True, math.inf, True, 0, -1), None, self.general()))
        parts, left = [], amount
        for _, key, available in sorted(slots, key=lambda s: s[0]):
            if left == 0:
                break
            taken = min(available, left)
            parts.append((key, taken))
            left -= taken
        return parts

    def take(self, parts: list[tuple[str | None, int]]) -> None:
        for key, amount in parts:
            if key is not None:
                self.grants[key]["remaining"] -= amount
            self.balance -= amount

    def give_back_parts(self, parts: list[tuple[str | None, int]]) -> int:
        """Back to their grants; what belongs to a closed grant is written off at once."""
        lapsed = 0
        for key, amount in parts:
            if key is None:
                self.balance += amount
            elif self.grants[key]["status"] == "active":
                self.grants[key]["remaining"] += amount
                self.balance += amount
            else:
                lapsed += amount
        return lapsed

    def expire_grants(self, t: float) -> None:
        for g in self.grants.values():
            if g["status"] == "active" and g["expires"] is not None and g["expires"] <= t:
                self.balance -= g["remaining"]
                g["remaining"], g["status"] = 0, "expired"

    def to_notify(self, t: float) -> list[dict[str, Any]]:
        """Live grants within the expiry notice, not announced yet."""
        return [
            g
            for g in self.grants.values()
            if g["status"] == "active"
            and g["remaining"] > 0
            and not g["notified"]
            and g["expires"] is not None
            and t < g["expires"] <= t + NOTICE_DAYS
        ]

    def refresh(self, t: float) -> None:
        if t - self.free_reset >= PERIOD:
            self.free_reset += math.floor((t - self.free_reset) / PERIOD) * PERIOD
            self.free_used = 0
        if t - self.sub_reset >= PERIOD:
            self.sub_reset += math.floor((t - self.sub_reset) / PERIOD) * PERIOD
            self.sub_used = 0

    def active(self, t: float) -> bool:
        return self.sub_type is not None and self.sub_end is not None and self.sub_end > t


@dataclass
class Model:
    t: float = 0.0
    accounts: dict[int, Account] = field(
        default_factory=lambda: {u: Account(admin=(u == USERS[-1])) for u in USERS}
    )
    requests: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunded: set[str] = field(default_factory=set)
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)
    seq: int = 0  # the order grants were made in
    lapsed: int = 0  # what the last give-back wrote off

    def bring_up_to_date(self, user: int) -> None:
        """Lazy resets, then the expiry of the account's due holds: what every movement and
        every read that writes does first."""
        acc = self.accounts[user]
        acc.refresh(self.t)
        acc.expire_grants(self.t)
        for hold in self.holds.values():
            if hold["user"] == user and hold["status"] == "held" and hold["expires"] <= self.t:
                self.give_back(acc, hold["source"], hold["amount"], hold["t"], hold["parts"])
                hold["status"] = "expired"
        for g in acc.to_notify(self.t):
            g["notified"] = True

    def give_back(
        self,
        acc: Account,
        source: str,
        amount: int,
        taken_at: float,
        parts: list[tuple[str | None, int]] | None = None,
    ) -> int:
        if source == "credits":
            self.lapsed = acc.give_back_parts(parts if parts is not None else [(None, amount)])
        elif source in ("subscription", "freemium"):
            used, reset = (
                ("sub_used", acc.sub_reset)
                if source == "subscription"
                else ("free_used", acc.free_reset)
            )
            amount = min(amount, getattr(acc, used)) if taken_at >= reset else 0
            setattr(acc, used, getattr(acc, used) - amount)
        else:
            amount = 0
        return amount

    def keyed(
        self, key: str, user: int, fingerprint: tuple[Any, ...], body, asked: Any = None
    ) -> dict[str, Any]:
        """``fingerprint`` is (user, operation, cost charged); ``asked`` the cost the request
        passed: a repeat matches the user and operation, and the cost when it passes one.
        ``body`` may answer a 422, which is not remembered."""
        self.bring_up_to_date(user)
        if key in self.requests:
            stored_fp, outcome = self.requests[key]
            if stored_fp[:2] != fingerprint[:2] or asked not in (None, stored_fp[2]):
                return {"code": 409}
            return {**outcome, "replayed": True}
        outcome = {**body(self.accounts[user]), "replayed": False}
        if outcome["code"] != 422:
            cost = outcome.pop("_cost", fingerprint[2])
            self.requests[key] = ((*fingerprint[:2], cost), outcome)
        return outcome

    def draw(
        self, op: str, acc: Account, effective: int
    ) -> tuple[str, int, list[tuple[str | None, int]]] | None:
        if acc.admin:
            return "admin", 0, []
        if op == "generation" and acc.active(self.t) and acc.sub_used < acc.sub_limit:
            acc.sub_used += 1
            return "subscription", 1, []
        if op == "generation" and acc.free_used < FREEMIUM:
            acc.free_used += 1
            return "freemium", 1, []
        if acc.balance >= effective:
            parts = acc.plan(effective)
            acc.take(parts)
            return "credits", effective, parts
        return None

    def reserve(self, op: str, user: int, key: str, cost: int | None, ttl: int) -> dict[str, Any]:
        effective = cost if cost is not None else COSTS[op]

        def hold(acc: Account) -> dict[str, Any]:
            drawn = self.draw(op, acc, effective)
            if drawn is None:
                return {"code": 402}
            source, amount, parts = drawn
            self.holds[key] = {
                "user": user, "source": source, "amount": amount, "t": self.t,
                "expires": self.t + ttl / DAY_SECONDS, "status": "held", "parts": parts,
            }  # fmt: skip
            return {"code": 200, "source": source, "amount": amount, **_drawn(source, parts)}

        return self.keyed(key, user, (user, f"hold:{op}", effective), hold, asked=cost)

    def capture(self, key: str, amount: int | None) -> dict[str, Any]:
        hold = self.holds.get(key)
        if hold is None:
            return {"code": 404}
        # An amount the hold rules out is a 422 in any state of the hold, never remembered.
        ruled_out = amount is not None and amount != hold["amount"]
        if ruled_out and (amount > hold["amount"] or hold["source"] != "credits"):
            return {"code": 422}

        def keep(acc: Account) -> dict[str, Any]:
            if hold["status"] != "held":
                return {"code": 409, "status": hold["status"], "_cost": amount}
            kept = hold["amount"] if amount is None else amount
            parts, rest = _split(hold["parts"], kept)
            if hold["source"] == "credits":
                acc.give_back_parts(rest)
            hold["status"] = "captured"
            self.charges[key] = {**hold, "amount": kept, "parts": parts}
            return {"code": 200, "amount": kept, "_cost": kept}

        return self.keyed(
            f"billing:capture:{key}",
            hold["user"],
            (hold["user"], "capture", None),
            keep,
            asked=amount,
        )

    def release(self, key: str) -> dict[str, Any]:
        hold = self.holds.get(key)
        if hold is None:
            return {"code": 404}

        def give(acc: Account) -> dict[str, Any]:
            if hold["status"] != "held":
                return {"code": 409, "status": hold["status"]}
            self.lapsed = 0
            returned = self.give_back(acc, hold["source"], hold["amount"], hold["t"], hold["parts"])
            hold["status"] = "released"
            return {"code": 200, "amount": returned, "expired": self.lapsed or None}

        return self.keyed(
            f"billing:release:{key}", hold["user"], (hold["user"], "release", None), give
        )

    def expire_all(self) -> None:
        for user in {h["user"] for h in self.holds.values()}:
            if any(
                h["user"] == user and h["status"] == "held" and h["expires"] <= self.t
                for h in self.holds.values()
            ):
                self.bring_up_to_date(user)

    def charge(self, op: str, user: int, key: str, cost: int | None) -> dict[str, Any]:
        effective = cost if cost is not None else COSTS[op]

        def pay(acc: Account) -> dict[str, Any]:
            drawn = self.draw(op, acc, effective)
            if drawn is None:
                return {"code": 402}
            source, amount, parts = drawn
            self.charges[key] = {
                "user": user, "source": source, "amount": amount, "t": self.t, "parts": parts,
            }  # fmt: skip
            return {"code": 200, "source": source, "amount": amount, **_drawn(source, parts)}

        return self.keyed(key, user, (user, op, effective), pay, asked=cost)

    def grant(
        self, user: int, amount: int, key: str, terms: tuple[Any, ...] = (None, None, None)
    ) -> dict[str, Any]:
        days, priority, category = terms

        def top_up(acc: Account) -> dict[str, Any]:
            acc.balance += amount
            self.seq += 1
            acc.grants[key] = {
                "amount": amount, "remaining": amount,
                "expires": None if days is None else self.t + days,
                "priority": 50 if priority is None else priority,
                "category": category or "paid", "status": "active", "seq": self.seq,
                "notified": False,
            }  # fmt: skip
            return {"code": 200, "amount": amount}

        plain = days is None and priority in (None, 50) and category in (None, "paid")
        operation = "grant" if plain else ("grant", days, priority or 50, category or "paid")
        return self.keyed(key, user, (user, operation, amount), top_up, asked=amount)

    def void(self, key: str) -> dict[str, Any]:
        owner = next((u for u, acc in self.accounts.items() if key in acc.grants), None)
        if owner is None:
            return {"code": 404}

        def remove(acc: Account) -> dict[str, Any]:
            g = acc.grants[key]
            if g["status"] != "active":
                return {"code": 409, "status": g["status"]}
            left = g["remaining"]
            acc.balance -= left
            g["remaining"], g["status"] = 0, "voided"
            return {"code": 200, "amount": left}

        return self.keyed(f"billing:void:{key}", owner, (owner, "void", None), remove)

    def subscribe(self, user: int, tier: str, days: int, key: str) -> dict[str, Any]:
        canonical = ALIASES.get(tier, tier)

        def activate(acc: Account) -> dict[str, Any]:
            if not acc.active(self.t):
                change = "new"
                acc.sub_end, acc.sub_used, acc.sub_reset = self.t + days, 0, self.t
            elif acc.sub_type == canonical:
                change = "renewal"
                acc.sub_end += days
            else:
                change = "tier_change"
                acc.sub_end = max(acc.sub_end, self.t + days)
            acc.sub_type, acc.sub_limit = canonical, TIERS[canonical]
            return {"code": 200, "change": change}

        return self.keyed(key, user, (user, f"subscription:{tier}", days), activate, asked=days)

    def refund(self, key: str) -> dict[str, Any]:
        charge = self.charges.get(key)
        if charge is None:
            return {"code": 404}
        acc = self.accounts[charge["user"]]
        self.bring_up_to_date(charge["user"])
        if key in self.refunded:
            return {"code": 200, "replayed": True}
        self.refunded.add(key)
        self.lapsed = 0
        amount = self.give_back(
            acc, charge["source"], charge["amount"], charge["t"], charge.get("parts")
        )
        return {"code": 200, "amount": amount, "replayed": False, "expired": self.lapsed or None}

    def reset_all(self) -> None:
        for acc in self.accounts.values():
            acc.refresh(self.t)

    def expire_all_grants(self) -> None:
        # The sweep takes the accounts with a grant due, or due for its expiring notice.
        for user, acc in self.accounts.items():
            due = any(
                g["status"] == "active" and g["expires"] is not None and g["expires"] <= self.t
                for g in acc.grants.values()
            )
            if due or acc.to_notify(self.t) or any(
                g["status"] == "active" and g["remaining"] > 0 and not g["notified"]
                and g["expires"] is not None and g["expires"] <= self.t + NOTICE_DAYS
                for g in acc.grants.values()
            ):  # fmt: skip
                self.bring_up_to_date(user)


def _drawn(source: str, parts: list[tuple[str | None, int]]) -> dict[str, Any]:
    if source != "credits":
        return {}
    return {"credits_drawn": [{"grant": key, "amount": amount} for key, amount in parts]}


def _split(
    parts: list[tuple[str | None, int]], amount: int
) -> tuple[list[tuple[str | None, int]], list[tuple[str | None, int]]]:
    """The first ``amount`` of the parts (a capture keeps what was drawn first), and the rest."""
    kept, rest, left = [], [], amount
    for key, n in parts:
        taken = min(n, left)
        left -= taken
        if taken:
            kept.append((key, taken))
        if n - taken:
            rest.append((key, n - taken))
    return kept, rest


keys = st.integers(min_value=0, max_value=8).map(lambda n: f"k{n}")
users = st.sampled_from([501, 501, 502, 502, 503])  # the admin less often
costs = st.one_of(st.none(), st.integers(min_value=1, max_value=15))
generation = st.tuples(st.just("generation"), users, keys, costs)
refund = st.tuples(st.just("refund"), keys)
# A few minutes (432 s, which outlives a 300 s hold but not a 900 s one), or days.
advance = st.tuples(st.just("advance"), st.sampled_from([0.005, 1, 7, 15, 29, 31, 45]))
reserve = st.tuples(
    st.just("reserve"),
    st.sampled_from(["generation", "generation", "assistant"]),
    users,
    keys,
    costs,
    st.sampled_from([300, 900, DAY_SECONDS]),
)
capture = st.tuples(
    st.just("capture"), keys, st.one_of(st.none(), st.integers(min_value=0, max_value=12))
)
# Repeated entries weight the draw towards charges, refunds and the passing of time, which
# is where the rules interact (refunds across periods, expiring subscriptions).
operations = st.one_of(
    generation,
    generation,
    generation,
    st.tuples(st.just("assistant"), users, keys, costs),
    st.tuples(st.just("grant"), users, keys, st.integers(min_value=1, max_value=40)),
    st.tuples(
        st.just("grant"),
        users,
        keys,
        st.integers(min_value=1, max_value=40),
        # (days to expiry, priority, category): 0.004 days (346 s) outlive one small advance
        # (432 s) by nothing, so they expire at the next one; the rest last longer.
        st.tuples(
            st.sampled_from([None, 0.004, 2, 20]),
            st.sampled_from([None, 10, 50, 90]),
            st.sampled_from([None, "promotional", "paid"]),
        ),
    ),
    st.tuples(st.just("void"), keys),
    st.tuples(st.just("expire_grants")),
    st.tuples(
        st.just("subscribe"),
        users,
        keys,
        st.sampled_from(["basic", "standard", "pro"]),
        st.sampled_from([10, 30, 45]),
    ),
    refund,
    refund,
    advance,
    advance,
    reserve,
    reserve,
    capture,
    st.tuples(st.just("release"), keys),
    st.tuples(st.just("expire")),
    st.tuples(st.just("reset")),
    st.tuples(st.just("state"), users),
)


def _check_account(worker, accounts, model: Model, user: int) -> None:
    acc = model.accounts[user]
    row = accounts.get(user)
    assert row.balance_credits == acc.balance
    grants = {g.idempotency_key: (g.remaining, g.status) for g in grant_rows(accounts.engine, user)}
    assert grants == {k: (g["remaining"], g["status"]) for k, g in acc.grants.items()}
    assert row.subscription_ops_used == acc.sub_used
    assert row.freemium_actions_used == acc.free_used
    assert row.subscription_type == acc.sub_type
    if acc.sub_type is not None:
        assert row.subscription_ops_limit == acc.sub_limit
    assert row.balance_credits >= 0


# Seeds for the search: sequences where the rules interact, then random ones.
SEEDS = [
    # A refund of an action from an ended period must not free an action of the new one.
    [
        ("generation", 501, "k1", None),
        ("advance", 31),
        ("generation", 501, "k2", None),
        ("refund", "k1"),
    ],
    # A tier change for fewer days than are left keeps the later end.
    [
        ("subscribe", 501, "k1", "standard", 45),
        ("subscribe", 501, "k2", "basic", 10),
        ("advance", 29),
        ("generation", 501, "k3", None),
        ("state", 501),
    ],
    # Expiry, renewal after expiry, replays and conflicts of one key.
    [
        ("grant", 502, "k1", 30),
        ("subscribe", 502, "k2", "pro", 10),
        ("advance", 15),
        ("generation", 502, "k3", 5),
        ("generation", 502, "k3", 5),
        ("generation", 502, "k3", 6),
        ("subscribe", 502, "k4", "standard", 10),
        ("reset",),
        ("refund", "k3"),
        ("refund", "k3"),
    ],
    # An admin is charged nothing, and a refund of it returns nothing.
    [("generation", 503, "k1", None), ("assistant", 503, "k2", 15), ("refund", "k2")],
    # A hold's life: part captured and refunded, released, expired by time or the sweep.
    [
        ("grant", 502, "k0", 40),
        ("reserve", "assistant", 502, "k1", 12, 900),
        ("capture", "k1", 5),
        ("refund", "k1"),
        ("reserve", "generation", 502, "k2", None, 300),
        ("release", "k2"),
        ("capture", "k2", None),
        ("reserve", "generation", 502, "k3", None, 300),
        ("reserve", "assistant", 502, "k4", 3, 900),
        ("advance", 0.005),
        ("state", 502),
        ("capture", "k3", None),
        ("expire",),
        ("advance", 0.005),
        ("expire",),
        ("release", "k4"),
    ],
    # Grants: the draw order, an expiry between a reserve and its release, a refund after
    # its grant expired, a void while a hold keeps part of the grant, the sweep.
    [
        ("grant", 502, "k0", 10),
        ("grant", 502, "k1", 12, (0.004, None, "promotional")),
        ("grant", 502, "k2", 8, (None, 10, None)),
        ("assistant", 502, "k3", 15),
        ("reserve", "assistant", 502, "k4", 9, DAY_SECONDS),
        ("advance", 0.005),
        ("release", "k4"),
        ("refund", "k3"),
        ("grant", 501, "k5", 20, (20, 90, "paid")),
        ("reserve", "assistant", 501, "k6", 6, DAY_SECONDS),
        ("void", "k5"),
        ("void", "k5"),
        ("release", "k6"),
        ("grant", 501, "k7", 5, (0.004, None, None)),
        ("advance", 0.005),
        ("expire_grants",),
        ("void", "k7"),
    ],
    # A hold taken at the end of a period, released in the next one, returns nothing.
    [
        ("reserve", "generation", 501, "k1", None, DAY_SECONDS),
        ("advance", 29),
        ("reserve", "generation", 501, "k2", None, DAY_SECONDS),
        ("advance", 1),
        ("release", "k2"),
        ("generation", 501, "k3", None),
        ("generation", 501, "k1", None),
    ],
]


def _seeded(test):
    for seed in SEEDS:
        test = example(steps=seed)(test)
    return test


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@_seeded
@given(steps=st.lists(operations, min_size=5, max_size=30))
def test_random_sequences_agree_with_the_model(worker, accounts, engine, settings_env, steps):
    settings_env(
        freemium_limit=str(FREEMIUM),
        tiers='{"basic": 2, "standard": 4}',
        tier_aliases='{"pro": "standard"}',
        generation_cost=str(COSTS["generation"]),
        assistant_cost=str(COSTS["assistant"]),
    )
    db.truncate_all(engine)
    for user in USERS:
        accounts.create(id=user, role="admin" if user == USERS[-1] else "user")
    model = Model()
    # Grants made at one model time with the same term expire at the same instant: their
    # expires_at is this run's start plus the term (the clock moves by shifting rows back).
    started = datetime.now(UTC).replace(microsecond=0)
    sent_terms: dict[tuple[str, Any], str] = {}

    for step in steps:
        kind, *args = step
        touched: list[int] = []
        if kind in ("generation", "assistant"):
            user, key, cost = args
            kwargs = {"cost": cost} if cost is not None else {}
            send = worker.charge_generation if kind == "generation" else worker.charge_assistant
            got, want = send(user, key, **kwargs), model.charge(kind, user, key, cost)
            touched = [user]
        elif kind == "grant":
            user, key, amount, *terms = args
            days, priority, category = terms[0] if terms else (None, None, None)
            kwargs: dict[str, Any] = {}
            if days is not None:
                at = started + timedelta(days=days)
                kwargs["expires_at"] = sent_terms.setdefault((key, days), at.isoformat())
            if priority is not None:
                kwargs["priority"] = priority
            if category is not None:
                kwargs["category"] = category
            got = worker.grant(user, amount, key, **kwargs)
            want = model.grant(user, amount, key, (days, priority, category))
            touched = [user]
        elif kind == "void":
            (key,) = args
            got, want = worker.void_grant(key), model.void(key)
            touched = list(USERS)
        elif kind == "expire_grants":
            worker.expire_grants()
            model.expire_all_grants()
            touched = list(USERS)
            got = want = {}
        elif kind == "subscribe":
            user, key, tier, days = args
            got = worker.subscribe(user, tier, key, days=days)
            want = model.subscribe(user, tier, days, key)
            touched = [user]
        elif kind == "refund":
            (key,) = args
            got, want = worker.refund(key), model.refund(key)
            touched = list(USERS)
        elif kind == "reserve":
            op, user, key, cost, ttl = args
            kwargs = {"ttl_seconds": ttl, **({"cost": cost} if cost is not None else {})}
            send = worker.reserve_generation if op == "generation" else worker.reserve_assistant
            got, want = send(user, key, **kwargs), model.reserve(op, user, key, cost, ttl)
            touched = [user]
        elif kind == "capture":
            key, amount = args
            kwargs = {"amount": amount} if amount is not None else {}
            got, want = worker.capture(key, **kwargs), model.capture(key, amount)
            touched = list(USERS)
        elif kind == "release":
            (key,) = args
            got, want = worker.release(key), model.release(key)
            touched = list(USERS)
        elif kind == "expire":
            worker.expire_holds()
            model.expire_all()
            touched = list(USERS)
            got = want = {}
        elif kind == "advance":
            shift_clock(engine, args[0])
            model.t += args[0]
            continue
        elif kind == "reset":
            worker.reset_due_limits()
            model.reset_all()
            touched = list(USERS)
            got = want = {}
        else:
            (user,) = args
            state = worker.state(user)["state"]
            model.bring_up_to_date(user)
            acc = model.accounts[user]
            assert state["subscription"]["active"] == acc.active(model.t)
            assert state["freemium"]["remaining"] == max(FREEMIUM - acc.free_used, 0)
            open_credits = sum(
                h["amount"]
                for h in model.holds.values()
                if h["user"] == user and h["status"] == "held" and h["source"] == "credits"
            )
            assert state["held"]["credits"] == open_credits
            live = [
                (k, g["remaining"])
                for k, g in acc.grants.items()
                if g["status"] == "active" and g["remaining"] > 0
            ]
            shown = [(g["key"], g["remaining"]) for g in state["credits"]["grants"]]
            assert sorted(shown) == sorted(live)
            touched = [user]
            got = want = {}

        for name, value in want.items():
            assert got.get(name) == value, (step, name, got, want)
        for user in touched:
            _check_account(worker, accounts, model, user)
        audit = worker.audit()
        assert audit["clean"], (step, audit["mismatches"])
