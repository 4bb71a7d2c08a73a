"""What a user installs: the wheel packages every module, and the names operators rely on stay."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SKIPPED = (".git", ".venv", "build", "*.egg-info", "__pycache__", "tests", "bench")

# Modules that only run inside another program: Alembic's env.py runs under ``alembic``.
RUN_ELSEWHERE = {"migrations.env"}


def _modules(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(".py") and ".dist-info" not in n]
    modules = [n[: -len(".py")].replace("/", ".").removesuffix(".__init__") for n in names]
    return sorted(m for m in modules if m not in RUN_ELSEWHERE)


def test_the_wheel_installs_into_a_clean_virtualenv_and_imports_every_module(tmp_path):
    # Built from a copy: setuptools keeps a build/ directory beside the source, whose stale
    # modules would otherwise end up in the wheel.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*SKIPPED))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), source],
        check=True,
    )
    (wheel,) = tmp_path.glob("billing_processor-*.whl")
    modules = _modules(wheel)
    # Every package of the source tree, sub-packages included, is in the wheel.
    packages = {
        ".".join(init.relative_to(ROOT).parent.parts)
        for top in ("billing", "billing_client", "cli", "models", "worker", "tasks", "migrations")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert packages <= set(modules), sorted(packages - set(modules))
    assert {"billing.movements.frame", "billing.storage.psycopg_store", "celeryconfig"} <= set(
        modules
    )

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True)
    # -I: no current directory, no PYTHONPATH, so nothing is imported from this checkout.
    script = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    script += "print(importlib.import_module('billing').__file__)\n"
    done = subprocess.run(
        [python, "-I", "-c", script, *modules],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(venv)), done.stdout


def test_logger_names_operators_filter_on_stay_where_they_were():
    from billing.jobs import resets
    from tasks import base, request
    from worker import beat, events, malformed, metrics

    assert resets.logger.name == "billing.resets"
    assert base.logger.name == "billing.outcomes"
    assert events.logger.name == "billing.events"
    assert metrics.logger.name == "billing.metrics"
    assert beat.logger.name == "billing.beat"
    assert request.logger.name == "tasks.request"
    assert malformed.logger.name == "worker.malformed"


def test_the_request_class_path_names_its_module():
    from tasks.base import BillingTask
    from tasks.request import BillingRequest

    module, _, name = BillingTask.Request.partition(":")
    assert (module, name) == (BillingRequest.__module__, BillingRequest.__name__)


def _locked() -> dict[str, str]:
    from packaging.requirements import Requirement

    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            requirement = Requirement(line)
            (spec,) = requirement.specifier  # exactly one ==
            assert spec.operator == "==", line
            pins[_normal(requirement.name)] = spec.version
    return pins


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_the_lock_pins_every_declared_dependency_inside_its_range():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    pins = _locked()
    for line in declared:
        requirement = Requirement(line)
        name = _normal(requirement.name)
        assert name in pins, f"{name} is declared but not in requirements.lock: regenerate it"
        assert requirement.specifier.contains(pins[name], prereleases=True), (line, pins[name])


def test_the_suite_runs_on_the_locked_versions():
    """What `.ci/run` installed through the lock is what the lock says: a lock the suite never
    ran on is a guess."""
    from importlib.metadata import distributions

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    installed = {_normal(d.metadata["Name"]): d.version for d in distributions()}
    environment = default_environment()
    checked = set()
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line or line.startswith((" ", "#")):
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue  # another platform's or Python's package
        name = _normal(requirement.name)
        if name not in installed:
            continue  # an extra this environment was not installed with (docs)
        (spec,) = requirement.specifier
        assert installed[name] == spec.version, (name, installed[name], spec.version)
        checked.add(name)
    # The suite's own packages, at least, came through the lock.
    assert {"celery", "sqlalchemy", "psycopg", "pytest", "kombu", "redis"} <= checked
