"""Show slot status: a rich table for people, a JSON-ready dict for scripts."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from opcache_guard.slots.base import GroupStatus

PARTIAL_NOTE = "this backend lists only the slots held by this process"


def format_age(seconds: float) -> str:
    """Format a duration as 45s, 12m 3s or 2h 5m."""
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


def status_table(groups: list[GroupStatus], backend: str) -> Table:
    """Build a table with one row per holder, or one row for a group with none."""
    table = Table(title=f"slots ({backend})")
    for column in ("group", "limit", "max out", "held", "host", "reason", "age"):
        table.add_column(column, justify="right" if column in ("max out", "held") else "left")
    partial = False
    for status in groups:
        policy = status.policy
        limit = policy.limit + (f" of {policy.size}" if policy.size else "")
        if policy.min_pooled:
            limit += f", min pooled {policy.min_pooled}"
        held = f"{len(status.holders)}" + ("" if status.holders_complete else "+?")
        partial = partial or not status.holders_complete
        first = [policy.name, limit, str(status.max_out), held]
        if not status.holders:
            table.add_row(*first, "-", "-", "-")
        for index, holder in enumerate(status.holders):
            lead = first if index == 0 else ["", "", "", ""]
            table.add_row(*lead, holder.host, holder.reason, format_age(holder.age))
    if partial:
        table.caption = f"+? : {PARTIAL_NOTE}"
    return table


def status_dict(groups: list[GroupStatus], backend: str) -> dict[str, Any]:
    """Build the JSON form of ``slots status``: backend, then each group and its holders."""
    return {
        "backend": backend,
        "groups": [
            {
                "name": status.policy.name,
                "limit": status.policy.limit,
                "size": status.policy.size,
                "min_pooled": status.policy.min_pooled,
                "max_out": status.max_out,
                "holders_complete": status.holders_complete,
                "holders": [
                    {"host": h.host, "holder": h.holder, "reason": h.reason,
                     "since": h.since, "age": round(h.age, 3)}
                    for h in status.holders
                ],
            }
            for status in groups
        ],
    }
