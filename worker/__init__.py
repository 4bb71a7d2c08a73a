"""The Celery app: `celery -A worker worker -Q billing` runs it, `celery -A worker beat` beats."""

from worker.app import app

__all__ = ["app"]
