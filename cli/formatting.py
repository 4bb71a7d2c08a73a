"""How the command line prints an account, ledger rows and events: shared by the commands
(``cli.main``) and the demo (``cli.demo``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def event_subject(data: dict[str, Any]) -> str:
    """What an event is about, in a word: its hold, its grant, its subscription's end, or its
    movement."""
    return (
        data.get("hold_key")
        or data.get("grant")
        or data.get("ends_at")
        or data.get("idempotency_key")
        or ""
    )


def format_state(result: dict[str, Any]) -> str:
    s = result["state"]
    sub, free, held = s["subscription"], s["freemium"], s["held"]
    sub_line = (
        f"{sub['type']} ({'active until ' + sub['ends_at'] if sub['active'] else 'inactive'}), "
        f"{sub['ops_used']}/{sub['ops_limit']} operations used, {sub['ops_remaining']} left, "
        f"resets {sub['resets_at']}"
        if sub["type"]
        else "none"
    )
    return "\n".join(
        [
            f"user {s['user_id']} ({s['role']})",
            f"  subscription: {sub_line}",
            f"  freemium:     {free['used']}/{free['limit']} actions used, "
            f"{free['remaining']} left, resets {free['resets_at']}",
            f"  credits:      {s['credits']['balance']}",
            f"  held:         {held['subscription_ops']} operations, "
            f"{held['freemium_actions']} actions, {held['credits']} credits"
            " (taken by open holds, already out of the figures above)",
            *(
                f"    {h['idempotency_key']}: {h['amount']} {h['source']} for a"
                f" {h['operation']}, expires {h['expires_at']}"
                for h in result.get("open_holds", [])
            ),
        ]
    )


def format_ledger_rows(entries: Sequence[dict[str, Any]]) -> list[str]:
    header = f"{'id':>8}  {'created_at':<32} {'type':<12} {'source':<12} {'operation':<10} "
    header += f"{'amount':>8} {'balance':>8}  key"
    lines = [header]
    for e in entries:
        lines.append(
            f"{e['id']:>8}  {e['created_at']:<32} {e['entry_type']:<12} {e['source']:<12} "
            f"{e['operation'] or '-':<10} {e['amount']:>8} {e['balance_credits_after']:>8}  "
            f"{e['idempotency_key']}"
        )
    return lines


def format_grants(result: dict[str, Any]) -> str:
    """An account's live grants in draw order, then what is left of the general balance."""
    credits = result["credits"]
    lines = [f"{'key':<40} {'remaining':>10}  {'expires_at':<32} {'priority':>8}  category"]
    in_grants = 0
    for g in credits["grants"]:
        in_grants += g["remaining"]
        lines.append(
            f"{g['key']:<40} {g['remaining']:>10}  {g['expires_at'] or 'never':<32}"
            f" {g['priority']:>8}  {g['category']}"
        )
    if not credits["grants"]:
        lines = ["(no live grants)"]
    lines.append(f"balance {credits['balance']}, of which general {credits['balance'] - in_grants}")
    expiring = credits.get("expiring")
    if expiring:
        lines.append(f"expiring soonest: {expiring['amount']} at {expiring['at']}")
    return "\n".join(lines)
