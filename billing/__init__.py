"""Billing domain: the charge rules, free of Celery.

Tasks in ``tasks/`` parse messages and call into this package; everything that decides who
pays and with what lives here and talks only to SQLAlchemy sessions.
"""
