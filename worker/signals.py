from celery.signals import worker_process_init, worker_process_shutdown

from worker import db


@worker_process_init.connect
def _fresh_engine_in_child(**_: object) -> None:
    db.reset_engine()


@worker_process_shutdown.connect
def _close_engine(**_: object) -> None:
    db.reset_engine()
