"""Thin Celery task wrappers around the billing domain. ``tasks.names`` has the public names."""
