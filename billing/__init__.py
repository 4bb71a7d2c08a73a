"""Billing domain: who pays for a job and with what, free of Celery.

Tasks (``tasks/``) parse messages and call into this package; everything that decides or
records money lives here. It is layered, and each layer imports only the layers below it
(``lint-imports`` checks this, from the contracts in ``pyproject.toml``):

``billing.reads``
    What operators and the product read: ledger pages, the audit and the ledger chain it
    checks (with its repair), the processor's status. May import every layer below.
``billing.jobs``
    The periodic sweeps: allowance resets, hold expiry, tier sync, the outbox relay and its
    retention, the record of job runs. Set-based, safe to run twice or late.
``billing.storage``
    The database: engines and sessions, and the two implementations of the frame's ``Store``
    (PostgreSQL through psycopg; SQLAlchemy Core on any dialect), chosen by
    ``storage.factory.connect``.
``billing.movements``
    Every keyed movement through the one frame (lock, bring up to date, look up the key,
    decide, write, commit): charges, holds, grants, refunds, subscriptions, batches, and the
    ``Store`` protocol the frame asks of the database. Each module has a named entry point
    with the signature ``(store, args, settings) -> result``. It never imports ``storage``:
    the interface belongs to the code that uses it.
``billing.core``
    Plain records and row types, the rules as pure functions, settlement arithmetic, event
    detection, result shapes, argument validation, settings. No I/O.

No layer imports ``celery``, ``tasks``, ``worker``, ``cli`` or ``migrations``.

A charge, by name: ``tasks.charges.charge_generation`` -> ``BillingTask.execute`` ->
``BillingTask.on_store`` -> ``frame.replaying_races`` -> ``BillingTask.run_on_store`` ->
``storage.factory.connect`` -> ``movements.charges.generation`` -> ``charges.charge`` ->
``frame.run`` -> ``PgStore.lock`` ... ``PgStore.write``.
"""
