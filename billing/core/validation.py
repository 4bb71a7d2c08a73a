"""Validation of task arguments as a foreign producer may send them.

Anything wrong becomes a 422 ``invalid_request`` naming the field; nothing is written.
Strict types: JSON gives us ints, and a bool, float or numeric string is not an integer.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from billing.core import results

MAX_USER_ID = 2**63 - 1
MAX_KEY_LENGTH = 255
MAX_COST = 1_000_000
MAX_META_BYTES = 4096
MAX_META_DEPTH = 16
MAX_LEDGER_PAGE = 200
MAX_GRANT = 100_000_000
MAX_SUBSCRIPTION_DAYS = 3660
MAX_HOLD_TTL_SECONDS = 86_400
# A grant that should never expire names no ``expires_at``; none may name this or later.
LATEST_EXPIRY = datetime(9000, 1, 1, tzinfo=UTC)
# A grant's priority when it names none; lower is drawn first (``billing.core.credits``).
DEFAULT_PRIORITY = 50
# Refunds and resets write ledger rows under keys of their own; producers cannot forge them.
RESERVED_KEY_PREFIX = "billing:"


class InvalidRequest(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def result(self) -> results.Result:
        return results.invalid(self.field, self.message)


def _storable_text(value: str, field: str) -> str:
    # PostgreSQL text holds neither NUL nor lone surrogates; refuse them here, not at INSERT.
    if "\x00" in value:
        raise ValueError(f"{field} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field} must be valid UTF-8 text") from None
    return value


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @classmethod
    def parse(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Self:
        if args:
            raise InvalidRequest("args", "positional arguments are not accepted; use keywords")
        unknown = sorted(set(kwargs) - set(cls.model_fields))
        if unknown:
            raise InvalidRequest(unknown[0], f"unknown argument(s): {', '.join(unknown)}")
        provided = {k: v for k, v in kwargs.items() if v is not None}
        try:
            return cls.model_validate(provided)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in error["loc"]) or "request"
            raise InvalidRequest(field, error_message(error)) from None


def error_message(error: Any) -> str:
    """The message of one pydantic error: our validators' own words, without the
    ``Value error, `` pydantic puts before the text of a ValueError it caught."""
    if error["type"] == "missing":
        return "is required"
    cause = (error.get("ctx") or {}).get("error")
    if error["type"] in ("value_error", "assertion_error") and cause is not None:
        return str(cause)
    return str(error["msg"])


class UserArgs(Args):
    user_id: int = Field(gt=0, le=MAX_USER_ID)


class KeyArgs(Args):
    idempotency_key: str = Field(min_length=1, max_length=MAX_KEY_LENGTH)

    @field_validator("idempotency_key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("idempotency_key must not be blank")
        if value.startswith(RESERVED_KEY_PREFIX):
            raise ValueError(f"keys starting with {RESERVED_KEY_PREFIX!r} are reserved")
        return _storable_text(value, "idempotency_key")


class MetaArgs(Args):
    meta: dict[str, Any] | None = None

    @field_validator("meta")
    @classmethod
    def _meta(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        if _depth(value) > MAX_META_DEPTH:
            raise ValueError(f"meta is nested deeper than {MAX_META_DEPTH} levels")
        try:
            encoded = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except RecursionError:
            raise ValueError("meta is nested too deeply") from None
        except (TypeError, ValueError, UnicodeEncodeError) as exc:
            raise ValueError(f"meta must be plain JSON ({exc})") from None
        if len(encoded) > MAX_META_BYTES:
            raise ValueError(f"meta is {len(encoded)} bytes as JSON; the limit is {MAX_META_BYTES}")
        if b"\\u0000" in encoded or b"\x00" in encoded:
            raise ValueError("meta must not contain NUL characters")
        return value


class ShapeArgs(Args):
    # False: the answer leaves out ``state`` (the remembered outcome keeps it, so a later
    # request of the same key that asks for it gets it).
    include_state: bool = True


class ChargeArgs(ShapeArgs, MetaArgs, KeyArgs, UserArgs):
    cost: int | None = Field(default=None, gt=0, le=MAX_COST)


class GrantArgs(MetaArgs, KeyArgs, UserArgs):
    amount: int = Field(gt=0, le=MAX_GRANT)
    # An ISO-8601 instant with a UTC offset (later than now: the frame checks it against the
    # database's clock); absent, the grant never expires.
    expires_at: datetime | None = None
    priority: int = Field(default=DEFAULT_PRIORITY, ge=0, le=100)
    category: Literal["paid", "promotional"] = "paid"

    @field_validator("expires_at", mode="before")
    @classmethod
    def _expires_at(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("expires_at must be an ISO-8601 instant with a UTC offset")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("expires_at must be an ISO-8601 instant with a UTC offset") from None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise ValueError("expires_at must have a UTC offset (e.g. +00:00 or Z)")
        try:
            instant = parsed.astimezone(UTC)
        except OverflowError:
            raise ValueError(f"expires_at must be before {LATEST_EXPIRY.isoformat()}") from None
        # Any later and a database in a zone east of UTC prints it in year 10000, which
        # neither psycopg nor Python reads back.
        if instant >= LATEST_EXPIRY:
            raise ValueError(f"expires_at must be before {LATEST_EXPIRY.isoformat()}")
        return instant

    @property
    def fingerprint(self) -> str:
        """The grant's terms as the key remembers them: a resend that changes them is a 409.
        Empty for a grant with none of them set, so keys from before grants still match."""
        if (
            self.expires_at is None
            and self.priority == DEFAULT_PRIORITY
            and self.category == "paid"
        ):
            return ""
        expires = self.expires_at.isoformat() if self.expires_at is not None else "never"
        return f"{expires}|{self.priority}|{self.category}"


class VoidGrantArgs(KeyArgs):
    """``billing.void_grant``: the grant's own key."""

    reason: str | None = Field(default=None, max_length=500)

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str | None) -> str | None:
        return None if value is None else _storable_text(value, "reason")


class SubscriptionArgs(KeyArgs, UserArgs):
    tier: str = Field(min_length=1, max_length=64)
    days: int = Field(default=30, gt=0, le=MAX_SUBSCRIPTION_DAYS)


class OpenAccountArgs(UserArgs):
    role: Literal["user", "admin"] = "user"


class RefundArgs(KeyArgs):
    reason: str | None = Field(default=None, max_length=500)

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str | None) -> str | None:
        return None if value is None else _storable_text(value, "reason")


class ReserveArgs(ChargeArgs):
    ttl_seconds: int | None = Field(default=None, ge=1, le=MAX_HOLD_TTL_SECONDS)


MAX_BATCH = 100


class ChargeBatchArgs(ShapeArgs):
    """A batch of charges: the items are checked one by one when they run, so one bad item
    is a 422 in its place and never fails the others."""

    charges: list[Any] = Field(min_length=1, max_length=MAX_BATCH)


class ReserveBatchArgs(ShapeArgs):
    reserves: list[Any] = Field(min_length=1, max_length=MAX_BATCH)


class ChargeItem(MetaArgs, KeyArgs, UserArgs):
    """One item of ``billing.charge_batch``: a charge's arguments and its operation."""

    operation: Literal["generation", "assistant"]
    cost: int | None = Field(default=None, gt=0, le=MAX_COST)


class ReserveItem(ChargeItem):
    ttl_seconds: int | None = Field(default=None, ge=1, le=MAX_HOLD_TTL_SECONDS)


class CaptureArgs(KeyArgs):
    amount: int | None = Field(default=None, ge=0, le=MAX_COST)


class ReleaseArgs(RefundArgs):
    """The hold's key and an optional reason, as a refund takes its charge's."""


class AuditArgs(Args):
    user_id: int | None = Field(default=None, gt=0, le=MAX_USER_ID)


def _depth(value: Any, limit: int = MAX_META_DEPTH + 1) -> int:
    """Nesting depth of a JSON value, counted no further than ``limit``."""
    if limit <= 0 or not isinstance(value, dict | list):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)


class LedgerArgs(UserArgs):
    limit: int = Field(default=50, ge=1, le=MAX_LEDGER_PAGE)
    cursor: str | None = None

    @field_validator("cursor")
    @classmethod
    def _cursor(cls, value: str | None) -> str | None:
        if value is not None and not (value.isascii() and value.isdigit() and 0 < len(value) < 20):
            raise ValueError("cursor must be a next_cursor returned by get_ledger")
        return value
