from __future__ import annotations

import enum

from sqlalchemy import Enum


class UserRole(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


class EntryType(enum.StrEnum):
    CHARGE = "charge"
    REFUND = "refund"
    GRANT = "grant"
    RESET = "reset"
    SUBSCRIPTION = "subscription"
    # A hold's life: taken at reserve, then exactly one of capture, release or expire.
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"
    EXPIRE = "expire"
    # A grant's life after it is made: what is left of it expires, or an operator voids it.
    EXPIRY = "expiry"
    VOID = "void"


# The entry types that belong to a hold (and carry its key in ``hold_key``).
HOLD_ENTRY_TYPES = (EntryType.HOLD, EntryType.CAPTURE, EntryType.RELEASE, EntryType.EXPIRE)


class HoldStatus(enum.StrEnum):
    HELD = "held"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


class EventType(enum.StrEnum):
    """What the product hears about an account (``billing_events``, the outbox)."""

    CREDITS_LOW = "credits.low"
    CREDITS_DEPLETED = "credits.depleted"
    FREEMIUM_EXHAUSTED = "freemium.exhausted"
    SUBSCRIPTION_EXHAUSTED = "subscription.exhausted"
    SUBSCRIPTION_EXPIRING = "subscription.expiring"
    SUBSCRIPTION_EXPIRED = "subscription.expired"
    HOLD_EXPIRED = "hold.expired"
    CREDITS_EXPIRING = "credits.expiring"
    CREDITS_EXPIRED = "credits.expired"


class LedgerSource(enum.StrEnum):
    SUBSCRIPTION = "subscription"
    FREEMIUM = "freemium"
    CREDITS = "credits"
    ADMIN = "admin"


class Operation(enum.StrEnum):
    GENERATION = "generation"
    ASSISTANT = "assistant"


def pg_enum(enum_cls: type[enum.StrEnum], name: str) -> Enum:
    """A named PostgreSQL enum whose labels are the members' values (not their names)."""
    return Enum(
        enum_cls,
        name=name,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
        create_constraint=True,
    )


user_role_enum = pg_enum(UserRole, "user_role_enum")
ledger_entry_type_enum = pg_enum(EntryType, "ledger_entry_type_enum")
ledger_source_enum = pg_enum(LedgerSource, "ledger_source_enum")
ledger_operation_enum = pg_enum(Operation, "ledger_operation_enum")
hold_status_enum = pg_enum(HoldStatus, "hold_status_enum")
event_type_enum = pg_enum(EventType, "billing_event_type_enum")


class GrantCategory(enum.StrEnum):
    """What a grant's credits are: bought, or given. Promotional credits are drawn first."""

    PAID = "paid"
    PROMOTIONAL = "promotional"


class GrantStatus(enum.StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    VOIDED = "voided"


credit_category_enum = pg_enum(GrantCategory, "credit_category_enum")
grant_status_enum = pg_enum(GrantStatus, "grant_status_enum")
