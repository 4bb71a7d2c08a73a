"""Every code block of the README and the docs site (``docs/``) that is meant to run runs
here, as written, against the tests' services and the session's worker: the producer, the
holds, the batch, the account lifecycle and admin tasks, the ``billing_client`` flow, the
events consumer and the ``billing`` commands. A block that is not meant to run says so, and
why, in an HTML comment just before it (``<!-- not-run: reason -->``); JSON and ``text``
blocks are samples of output, not code.

The blocks read their URLs from the environment, as the README's readers do
(``BILLING_BROKER_URL``, ``BILLING_RESULT_BACKEND``): the tests' services. The account they use
(42) is made here. The names a block leaves to its reader's own code (``start_generation``,
``generate``, ``GenerationFailed``...) are stand-ins that record what the block did with them.
Every task a block sends must be waited for (a missing ``.get()`` fails) and must answer ``ok``
(a wrong queue is a 403, a renamed argument a 422: both fail), each item of a batch too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult
from sqlalchemy import text

from billing.core.settings import get_settings
from billing_client import BillingClient
from billing_client.names import PRIVILEGED
from cli import processes
from tests import db
from tests.conftest import RESULT_TIMEOUT, event_rows
from tests.procs import LOG_DIR, wait_until
from worker import app as worker_app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The pages whose blocks run here: the README and every page of the docs site.
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
# The page with the tasks table and the events consumer.
PRODUCERS = ROOT / "docs" / "producers.md"
USER = 42  # the account every example uses
# Output and data samples, and diagrams; every other block runs here or says why it does not.
DATA = frozenset({"json", "text", "mermaid"})  # mermaid: a diagram, drawn by the renderer
RUNNERS = frozenset({"python", "sh"})


@dataclass(frozen=True)
class Block:
    page: str  # relative to the checkout
    line: int
    lang: str
    code: str
    marker: str  # the HTML comment right before the fence ("" for none)
    section: str

    @property
    def id(self) -> str:
        where = re.sub(r"[^a-z0-9]+", "-", f"{self.page} {self.section}".lower()).strip("-")
        return f"{where}-line{self.line}"

    @property
    def not_run_reason(self) -> str | None:
        found = re.fullmatch(r"not-run:(.*)", self.marker, re.S)
        return found.group(1).strip() if found else None


def readme_blocks(readme: str, page: str = "README.md") -> list[Block]:
    blocks: list[Block] = []
    lines = readme.splitlines()
    section, i = "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        opening = re.fullmatch(r"```(\S*)\s*", line)
        if opening:
            end = lines.index("```", i + 1)
            before = lines[i - 1].strip() if i else ""
            marker = re.fullmatch(r"<!--\s*(.*?)\s*-->", before)
            blocks.append(
                Block(
                    page=page,
                    line=i + 1,
                    lang=opening.group(1),
                    code="\n".join(lines[i + 1 : end]) + "\n",
                    marker=marker.group(1) if marker else "",
                    section=section,
                )
            )
            i = end
        i += 1
    return blocks


BLOCKS = [
    block
    for path in PAGES
    for block in readme_blocks(path.read_text(), str(path.relative_to(ROOT)))
]
CONSUMER = [b for b in BLOCKS if b.marker == "consumer-example"]
PYTHON = [
    b for b in BLOCKS if b.lang == "python" and b.not_run_reason is None and b not in CONSUMER
]
SHELL = [b for b in BLOCKS if b.lang == "sh" and b.not_run_reason is None]


# Subcommands that run until stopped (or, the demo, start processes of their own).
LONG_RUNNING = frozenset({"worker", "beat", "flower", "demo"})


def only_billing_commands(block: Block) -> bool:
    """The shell blocks run here are ``billing`` commands that end by themselves: anything else
    (installing, starting services or workers, the benchmarks) is not for a test run to do,
    and must be marked."""
    commands = [
        line.split()
        for line in block.code.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return all(
        words[0] == "billing" and len(words) > 1 and words[1] not in LONG_RUNNING
        for words in commands
    )


def test_every_code_block_runs_here_or_says_why_not():
    unaccounted = [
        f"{b.page}:{b.line} ({b.lang or 'no language'})"
        for b in BLOCKS
        if b.lang not in DATA and b.lang not in RUNNERS and b.not_run_reason is None
    ]
    no_reason = [f"{b.page}:{b.line}" for b in BLOCKS if b.not_run_reason == ""]
    not_billing = [f"{b.page}:{b.line}" for b in SHELL if not only_billing_commands(b)]

    assert not unaccounted, f"blocks neither run nor marked <!-- not-run: why -->: {unaccounted}"
    assert not no_reason, f"<!-- not-run: --> without a reason: {no_reason}"
    assert not not_billing, f"unmarked shell blocks of more than `billing` commands: {not_billing}"
    assert len(CONSUMER) == 1 and len(PYTHON) >= 8 and SHELL


def test_the_tasks_table_names_each_tasks_queue_as_the_workers_route_it():
    settings = get_settings()
    rows = re.findall(r"^\| `(billing\.[a-z_]+)` \| `([a-z-]+)` \|", PRODUCERS.read_text(), re.M)
    worker_app.loader.import_default_modules()  # the task modules, as a worker imports them
    registered = {name for name in worker_app.tasks if name.startswith("billing.")}

    assert {name for name, _queue in rows} == registered
    for name, queue in rows:
        routed = worker_app.amqp.router.route({}, name)["queue"].name
        assert queue == routed, name
        assert queue == (settings.admin_queue if name in PRIVILEGED else settings.queue), name


# --- the python blocks --------------------------------------------------------------------


class GenerationFailed(Exception):
    """The reader's own exception for a failed generation."""


class RetryLater(Exception):
    """The reader's own way of retrying a job later."""


@dataclass
class Sent:
    name: str
    result: AsyncResult


@pytest.fixture
def tracked(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[Sent], set[str]]]:
    """What a block sends (from this thread: not the in-process worker's own messages) and
    which answers it waited for."""
    sent: list[Sent] = []
    waited: set[str] = set()
    me = threading.get_ident()
    send_task, get = Celery.send_task, AsyncResult.get

    def tracking_send_task(self: Celery, name: str, *args: Any, **kwargs: Any) -> AsyncResult:
        result = send_task(self, name, *args, **kwargs)
        if threading.get_ident() == me:
            sent.append(Sent(name, result))
        return result

    def tracking_get(self: AsyncResult, *args: Any, **kwargs: Any) -> Any:
        waited.add(self.id)
        return get(self, *args, **kwargs)

    monkeypatch.setattr(Celery, "send_task", tracking_send_task)
    monkeypatch.setattr(AsyncResult, "get", tracking_get)
    yield sent, waited


def _readers_code(calls: list[str], generation_fails: bool) -> dict[str, Any]:
    """What a block leaves to its reader: a producer's ``app`` as [Tasks] makes it, and the
    pipeline's own functions, which record their calls."""

    def record(name: str, result: Any = None):
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return result

        return call

    def generate(*_args: Any) -> str:
        calls.append("generate")
        if generation_fails:
            raise GenerationFailed("the GPU worker died")
        return "image"

    return {
        "__name__": "__readme__",
        "app": Celery(
            broker=os.environ["BILLING_BROKER_URL"], backend=os.environ["BILLING_RESULT_BACKEND"]
        ),
        "start_generation": record("start_generation"),
        "ask_user_to_top_up": record("ask_user_to_top_up"),
        "reject": record("reject"),
        "generate": generate,
        "GenerationFailed": GenerationFailed,
        "RetryLater": RetryLater,
    }


def _close_apps(namespace: dict[str, Any]) -> None:
    for value in namespace.values():
        if isinstance(value, BillingClient):
            value.app.close()
        elif isinstance(value, Celery):
            value.close()


def _scenarios(block: Block) -> list[bool]:
    """Whether generation fails: a block with a failure path runs down both."""
    return [False, True] if "GenerationFailed" in block.code else [False]


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block_runs_as_written(block, worker, accounts, engine, tracked):
    sent, waited = tracked
    for generation_fails in _scenarios(block):
        db.truncate_all(engine)  # each run of the block from nothing
        sent.clear()
        accounts.create(
            id=USER, balance_credits=1000, freemium_actions_used=get_settings().freemium_limit
        )
        if '"billing.refund"' in block.code:  # the charge it refunds, under its key
            worker.charge_generation(USER, "fitting-job-8c1f")
        calls: list[str] = []
        namespace = _readers_code(calls, generation_fails)
        try:
            code = compile(block.code, f"{block.page}:{block.line}", "exec")
            if generation_fails:
                with pytest.raises(GenerationFailed):
                    _run(code, namespace)
            else:
                _run(code, namespace)
        finally:
            _close_apps(namespace)

        assert sent, "the block sent no task"
        for message in sent:
            assert message.result.id in waited, f"{message.name}: its answer is never read"
            answer = message.result.get(timeout=RESULT_TIMEOUT)
            assert answer["ok"], (message.name, answer)
            for item in answer.get("results", []):
                assert item["ok"], (message.name, item)
        names = [m.name for m in sent]
        if "generate" in calls:  # the job's work ran: it was paid for, then settled
            assert ("billing.release" if generation_fails else "billing.capture") in names
        if "start_generation" in block.code:
            assert calls == ["start_generation"]


def _run(code: Any, namespace: dict[str, Any]) -> None:
    exec(code, namespace)
    if "run_fitting" in namespace:  # the pipeline's function: run one job through it
        job = SimpleNamespace(id="8c1f", user_id=USER)
        assert namespace["run_fitting"](job) == "image"


# --- the shell blocks ---------------------------------------------------------------------


@pytest.mark.parametrize("block", SHELL, ids=[b.id for b in SHELL])
def test_shell_block_runs_as_written(block, worker, accounts, tmp_path):
    assert only_billing_commands(block), "mark it <!-- not-run: why -->"
    accounts.create(id=USER)  # a new account: whatever it holds comes through the commands
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    shell = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = shell.communicate(timeout=120)
    finally:  # nothing it started outlives the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)

    assert shell.returncode == 0, stdout + stderr
    assert not stderr.strip(), stderr


# --- the events consumer ------------------------------------------------------------------


def _notifications(database: Path) -> list[tuple[str, str]]:
    if not database.exists():
        return []
    try:
        with sqlite3.connect(database, timeout=30) as conn:
            rows = conn.execute("SELECT event_id, type FROM notifications ORDER BY rowid")
            return [(event_id.replace("-", ""), kind) for event_id, kind in rows.fetchall()]
    except sqlite3.OperationalError:  # its tables are not made yet
        return []


def test_the_events_consumer_runs_as_written(worker, accounts, engine, settings_env, tmp_path):
    (consumer,) = CONSUMER
    (tmp_path / "product_events.py").write_text(consumer.code)
    # A queue of this test's own: the suite's own consumer (tests.consumer) may be reading
    # the default one on the same broker.
    queue = f"billing-events-readme-{uuid.uuid4().hex[:8]}"
    settings_env(events_queue=queue)
    product_db = tmp_path / "product.sqlite"
    hostname = f"readme-consumer-{uuid.uuid4().hex[:8]}@%h"
    cmd = [
        sys.executable, "-m", "celery", "-A", "product_events", "worker", "-P", "solo",
        "-n", hostname, "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{hostname.split('@')[0]}.log"
    env = {"BILLING_EVENTS_QUEUE": queue, "PRODUCT_DB": str(product_db)}
    cost = get_settings().generation_cost
    accounts.create(
        id=USER, balance_credits=2 * cost, freemium_actions_used=get_settings().freemium_limit
    )

    with processes.running(cmd, log, env, cwd=tmp_path) as proc:
        processes.wait_for_worker(worker_app, proc, processes.node_name(hostname))
        worker.charge_generation(USER, "fitting-job-1")
        worker.charge_generation(USER, "fitting-job-2")  # low, then depleted
        published = [
            (str(row.event_id).replace("-", ""), str(row.type)) for row in event_rows(engine, USER)
        ]
        wait_until(
            lambda: len(_notifications(product_db)) >= len(published),
            "the consumer handled every event",
            timeout=60,
        )
        first = _notifications(product_db)
        # Every event again, as a relay that died before marking them would send them.
        with engine.begin() as conn:
            conn.execute(text("UPDATE billing_events SET published_at = NULL"))
        assert worker.publish_events()["published"] == len(published)
        wait_until(
            lambda: log.read_text().count("skipped") >= len(published),
            "the consumer saw every duplicate",
            timeout=60,
        )
        again = _notifications(product_db)

    assert {kind for _id, kind in published} >= {"credits.low", "credits.depleted"}
    assert first == published  # each once, in order
    assert again == published  # the duplicates changed nothing
    assert log.read_text().count("skipped") == len(published)


# --- the pages generated from the code ----------------------------------------------------


def test_the_task_reference_and_env_example_are_what_the_code_generates():
    from cli import reference

    assert (ROOT / "docs" / "reference" / "tasks.md").read_text() == reference.render_tasks(), (
        "docs/reference/tasks.md is stale: run python -m cli.reference"
    )
    assert (ROOT / ".env.example").read_text() == reference.render_env(), (
        ".env.example is stale: run python -m cli.reference"
    )


def test_the_task_reference_lists_every_task_with_the_model_it_parses():
    from billing.core import validation
    from cli import reference

    models = reference.parsed_models()
    worker_app.loader.import_default_modules()

    assert set(models) == {name for name in worker_app.tasks if name.startswith("billing.")}
    assert models["billing.charge_generation"] is validation.ChargeArgs
    assert models["billing.open_account"] is validation.OpenAccountArgs
    page = (ROOT / "docs" / "reference" / "tasks.md").read_text()
    assert "| `cost` | int \\| None | `null` | > 0, <= 1,000,000 |" in page


def test_every_error_the_code_answers_is_in_the_contract():
    """Every error identifier a module defines is in the contract's table of codes."""
    import billing

    contract = PRODUCERS.read_text()
    table = set(re.findall(r"^\| \d{3} \| (.+?) \|", contract, re.M))
    listed = {code for cell in table for code in re.findall(r"`([a-z_]+)`", cell)}
    # The modules that answer errors: the result contract and the movements.
    package = Path(billing.__file__).parent
    modules = [package / "core" / "results.py", *(package / "movements").glob("*.py")]
    defined = set()
    for path in modules:
        defined |= set(re.findall(r'^[A-Z_]+ = "([a-z]+_[a-z_]+)"$', path.read_text(), re.M))

    assert defined, "no error identifiers found"
    assert defined <= listed, f"not in the contract's table: {sorted(defined - listed)}"


def test_env_example_loads_in_a_shell_as_getting_started_says(tmp_path):
    """Sourced with `set -a` as the page loads it, every value parses as its setting."""
    probe = (
        "import json; from billing.core.settings import Settings; s = Settings(); "
        "print(json.dumps({'tiers': s.tiers, 'aliases': s.tier_aliases, 'queue': s.queue}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    script = f'set -a && . "$1" && set +a && exec "$2" -c "{probe}"'
    loaded = subprocess.run(
        ["bash", "-c", script, "bash", str(ROOT / ".env.example"), sys.executable],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )

    assert loaded.returncode == 0, loaded.stderr
    settings = json.loads(loaded.stdout)
    assert settings["tiers"] == {"basic": 30, "standard": 100, "premium": 300}
    assert settings["aliases"] == {"pro": "standard"}
    assert settings["queue"] == "billing"
