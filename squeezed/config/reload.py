"""SIGHUP: which changed keys apply at once and which wait for a restart."""

from __future__ import annotations

from squeezed.config.keys import KEYS, RELOADABLE_KEYS, Config, with_values


def classify_changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """Keys whose value differs, split into (applied by SIGHUP, needing a restart)."""
    changed = [name for name in KEYS if old.get(name) != new.get(name)]
    return (
        [n for n in changed if n in RELOADABLE_KEYS],
        [n for n in changed if n not in RELOADABLE_KEYS],
    )


def apply_reloadable(current: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """For SIGHUP: `current` with `new`'s reloadable values applied, the keys applied,
    and the changed keys that keep their current value until a restart."""
    applied, need_restart = classify_changes(current, new)
    # Keys constrained together (poll-min/poll-max; dom0 min/max; the two sockets) are
    # either all reloadable or all not, so the result is as consistent as `new`.
    updated = with_values(current, {n: new.get(n) for n in applied})
    return updated, applied, need_restart

