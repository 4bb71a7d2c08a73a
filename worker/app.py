from celery import Celery

app = Celery("billing", include=["tasks.charges", "tasks.queries"])
app.config_from_object("celeryconfig")

import worker.signals  # noqa: E402,F401  (connects the per-process engine handlers)
