"""One database engine per process, created where it is used.

A forked worker child must never use the connections of its parent: the engine is keyed by
pid, and ``worker_process_init`` drops an inherited one without closing the parent's sockets.
"""

from __future__ import annotations

import os
import threading

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from billing.core.settings import get_settings
from billing.storage.engine import create_db_engine, session_factory

_lock = threading.Lock()
_pid: int | None = None
_engine: Engine | None = None
_factory: sessionmaker[Session] | None = None


def get_session_factory() -> sessionmaker[Session]:
    global _pid, _engine, _factory
    if _pid == os.getpid() and _factory is not None:
        return _factory
    with _lock:
        if _pid != os.getpid() or _factory is None:
            if _engine is not None:
                _engine.dispose(close=False)
            settings = get_settings()
            _engine = create_db_engine(
                settings.effective_database_url(), session_options=settings.session_options()
            )
            _factory = session_factory(_engine)
            _pid = os.getpid()
        return _factory


def get_engine() -> Engine:
    get_session_factory()
    assert _engine is not None
    return _engine


def reset_engine() -> None:
    """Forget this process's engine; the next task builds a fresh one."""
    global _pid, _engine, _factory
    with _lock:
        if _engine is not None:
            _engine.dispose(close=_pid == os.getpid())
        _pid, _engine, _factory = None, None, None
