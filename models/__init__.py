"""SQLAlchemy 2 typed models. The table and column names are a contract with other services."""

from models.allowance_reset import AllowanceReset
from models.base import Base
from models.enums import (
    HOLD_ENTRY_TYPES,
    EntryType,
    EventType,
    GrantCategory,
    GrantStatus,
    HoldStatus,
    LedgerSource,
    Operation,
    UserRole,
)
from models.event import Event
from models.grant import CreditGrant
from models.hold import Hold
from models.job_run import JobRun
from models.ledger import LedgerEntry
from models.request import BillingRequest
from models.user import User

__all__ = [
    "HOLD_ENTRY_TYPES",
    "AllowanceReset",
    "Base",
    "BillingRequest",
    "CreditGrant",
    "EntryType",
    "Event",
    "EventType",
    "GrantCategory",
    "GrantStatus",
    "Hold",
    "HoldStatus",
    "JobRun",
    "LedgerEntry",
    "LedgerSource",
    "Operation",
    "User",
    "UserRole",
]
