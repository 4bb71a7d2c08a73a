from celery import Celery

app = Celery(
    "billing",
    include=["tasks.charges", "tasks.holds", "tasks.queries", "tasks.lifecycle", "tasks.events"],
)
app.config_from_object("celeryconfig")

if app.conf.broker_url.startswith("sqla+"):
    # The embedded default's SQL broker polls its table; kombu's 1 s default would add up to a
    # second to every task. Its transport options go to create_engine, so set it here.
    from kombu.transport.sqlalchemy import Transport

    Transport.polling_interval = 0.05

import worker.broker  # noqa: E402
import worker.malformed  # noqa: E402
import worker.metrics  # noqa: E402  (serves /metrics when BILLING_METRICS_PORT is set)
import worker.routes  # noqa: E402
import worker.signals  # noqa: E402  (connects the per-process engine handlers)

worker.broker.install(app)
worker.routes.install(app)
worker.malformed.install(app)
