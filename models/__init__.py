"""SQLAlchemy 2 typed models. The table and column names are a contract with other services."""

from models.allowance_reset import AllowanceReset
from models.base import Base
from models.enums import EntryType, LedgerSource, Operation, UserRole
from models.ledger import LedgerEntry
from models.request import BillingRequest
from models.user import User

__all__ = [
    "AllowanceReset",
    "Base",
    "BillingRequest",
    "EntryType",
    "LedgerEntry",
    "LedgerSource",
    "Operation",
    "User",
    "UserRole",
]
