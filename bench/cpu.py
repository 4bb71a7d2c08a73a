"""Where a task's CPU goes: per-task CPU time of each process on the machine, from /proc.

The producer (this process), the worker's parent and its pool children, Redis and PostgreSQL
(every server process: backends, WAL writer, checkpointer, autovacuum) are read before and
after a stream; the difference divided by the number of tasks is what each spent per task.
Linux only; on a machine without /proc it reports nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, or None if it is gone."""
    try:
        fields = (PROC / pid / "stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def _kind(pid: str) -> str | None:
    try:
        comm = (PROC / pid / "comm").read_text().strip()
        cmdline = (PROC / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if int(pid) == os.getpid():
        return "producer"
    if comm.startswith("redis-server"):
        return "redis"
    if comm.startswith("postgres"):
        return "postgres"
    if "celery" in cmdline and " worker" in cmdline:
        return "worker"
    return None


def snapshot() -> dict[str, tuple[str, int, float]]:
    """Every process of interest: pid -> (kind, parent pid, CPU seconds)."""
    out: dict[str, tuple[str, int, float]] = {}
    if not PROC.is_dir():
        return out
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        kind, stat = _kind(entry.name), _stat(entry.name)
        if kind is not None and stat is not None:
            out[entry.name] = (kind, *stat)
    # A worker whose parent is a worker is a pool child.
    workers = {pid for pid, (kind, _, _) in out.items() if kind == "worker"}
    for pid in workers:
        _, ppid, cpu = out[pid]
        out[pid] = ("worker child" if str(ppid) in workers else "worker parent", ppid, cpu)
    return out


def per_task_ms(before: dict, after: dict, tasks: int) -> dict[str, float]:
    """CPU milliseconds per task by kind of process between two snapshots."""
    spent: dict[str, float] = {}
    for pid, (kind, _ppid, cpu) in after.items():
        start = before.get(pid, (kind, 0, 0.0))[2]
        spent[kind] = spent.get(kind, 0.0) + cpu - start
    out = {kind: round(seconds / tasks * 1000, 3) for kind, seconds in sorted(spent.items())}
    out["total"] = round(sum(spent.values()) / tasks * 1000, 3)
    return out
