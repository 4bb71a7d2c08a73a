"""The database side: engines and sessions (``storage.engine``), the PostgreSQL store on
psycopg (``storage.psycopg_store``), the SQLAlchemy Core store for any dialect
(``storage.sqlalchemy_store``), and the factory that picks one for an engine. Implements
``billing.movements.store.Store``; imports ``billing.movements`` and ``billing.core``."""
