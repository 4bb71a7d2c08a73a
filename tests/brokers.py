"""The brokers the suite runs the billing tasks on: the session's Redis, and RabbitMQ (a
vhost of the machine's node, or a node of the test's own that it can restart)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from kombu import Connection

from billing_client import rabbitmq
from tests.services import RABBITMQ_URL, REDIS_URL

# Redis loses a message caught between kombu's pop and its unacked record when the worker
# holding it dies or Redis restarts: its producer resends the key (docs/deployment.md: Brokers).
# RabbitMQ loses none, so a producer never has to.
REDIS_RESENDS_ALLOWED = 8


@dataclass(frozen=True)
class Broker:
    name: str
    url: str
    resends_allowed: int

    @property
    def amqp(self) -> bool:
        return rabbitmq.is_amqp(self.url)

    def worker_env(self, queue: str, **extra: str) -> dict[str, str]:
        """A worker process on this broker, with ``queue`` as its public and admin queue."""
        return {
            "BILLING_BROKER_URL": self.url,
            "BILLING_QUEUE": queue,
            "BILLING_ADMIN_QUEUE": queue,
            **extra,
        }

    @contextmanager
    def producer(self, queue: str, delivery_limit: int | None = None) -> Iterator[Celery]:
        """A producer's app on this broker that declares ``queue`` as the workers do."""
        app = Celery(f"producer-{self.name}")
        app.config_from_object("celeryconfig")
        app.conf.broker_url = self.url
        app.conf.result_backend = REDIS_URL
        if self.amqp:
            rabbitmq.configure(
                app.conf, queue, queue, delivery_limit or rabbitmq.DEFAULT_DELIVERY_LIMIT
            )
        try:
            yield app
        finally:
            app.close()


def redis_broker(url: str = REDIS_URL) -> Broker:
    return Broker("redis", url, REDIS_RESENDS_ALLOWED)


def rabbitmq_broker(url: str = RABBITMQ_URL) -> Broker:
    return Broker("rabbitmq", url, 0)


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True)


def fresh_vhost(url: str = RABBITMQ_URL) -> None:
    """An empty vhost for the test session, guest allowed on it (rabbitmqctl, as CI runs)."""
    vhost = Connection(url).virtual_host
    rabbitmqctl("delete_vhost", vhost)
    for args in (("add_vhost", vhost), ("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")):
        done = rabbitmqctl(*args)
        assert done.returncode == 0, done.stderr


def queue_length(url: str, name: str) -> int:
    with Connection(url) as conn:
        channel = conn.channel()
        try:
            return channel.queue_declare(queue=name, passive=True).message_count
        finally:
            channel.close()


def purge(url: str, name: str) -> None:
    """Empty a queue, if it exists."""
    with Connection(url) as conn:
        channel = conn.channel()
        try:
            channel.queue_purge(name)
        except conn.channel_errors:
            pass  # not declared yet: nothing to purge
        finally:
            if channel.is_open:
                channel.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _OwnServer:
    """A broker of the test's own: ``restart`` stops it, waits, and starts it again."""

    def start(self, timeout: float = 60) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 60) -> None:
        raise NotImplementedError

    def restart(self, pause: float = 2.0) -> None:
        self.stop()
        time.sleep(pause)
        self.start()


class OwnRabbitMQ(_OwnServer):
    """A RabbitMQ node of the test's own, on spare ports, with its data in ``root``: stopping
    it (SIGTERM, a clean shutdown) and starting it again is a broker restart."""

    def __init__(self, root: Path) -> None:
        server = shutil.which("rabbitmq-server", path="/usr/lib/rabbitmq/bin") or shutil.which(
            "rabbitmq-server"
        )
        assert server, "rabbitmq-server is needed for the broker restart scenario"
        self.port = _free_port()
        root.mkdir(parents=True, exist_ok=True)
        (root / "home").mkdir(exist_ok=True)
        config = root / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        self.cmd = [server]
        self.env = {
            **os.environ,
            # Run as the test's own user, its cookie in a home of its own.
            "HOME": str(root / "home"),
            "RABBITMQ_NODENAME": f"billing-test-{uuid.uuid4().hex[:8]}@localhost",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(_free_port()),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(root / "rabbitmq.pid"),
        }
        self.log = root / "server.out"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with Connection(self.url, connect_timeout=1) as conn:
                    conn.connect()
                    return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                time.sleep(0.25)
        raise RuntimeError(f"test RabbitMQ did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None:
            return
        os.killpg(self.proc.pid, 15)  # SIGTERM: the node shuts down cleanly
        self.proc.wait(timeout=timeout)
        self.proc = None


class OwnRedis(_OwnServer):
    """A Redis of the test's own on a spare port, keeping its data (AOF) across restarts."""

    def __init__(self, root: Path) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is needed for the broker restart scenario"
        self.port = _free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.cmd = [
            server, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(root),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        ]  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ping = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True)
            if ping.stdout.strip() == b"PONG":
                return
            time.sleep(0.1)
        raise RuntimeError("test Redis did not start")

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None:
            return
        self.proc.terminate()  # SIGTERM: Redis flushes its AOF and exits
        self.proc.wait(timeout=timeout)
        self.proc = None
