"""The processor's own log lines: one bare JSON object per line on the process's real stderr,
whatever Celery does with ``sys.stderr`` and the root logger, so log shippers parse them as
they are."""

from __future__ import annotations

import logging
import sys


def json_lines(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.__stderr__)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
