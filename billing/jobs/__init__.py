"""The periodic jobs beat runs: allowance resets, hold expiry, tier sync, the outbox relay and
its retention, and the record of their runs (``jobs.runs``). Each is set-based or batched and
idempotent. Imports ``storage``, ``movements`` and ``core``."""
