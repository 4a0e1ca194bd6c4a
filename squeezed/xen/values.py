"""Xenstore values as squeezed reads them: the per-domain keys it watches,
paths, units, and the checks every value passes before it touches the memory
arithmetic (a decimal integer, within the host's total)."""

from __future__ import annotations

import re

PAGE_KIB = 4
DOMAIN_KEYS = (
    "domain-type",
    "memory/initial-reservation",
    "memory/target",
    "memory/memory-offset",
    "memory/uncooperative",
    "memory/dynamic-min",
    "memory/dynamic-max",
    "control/feature-balloon",
    "data/updated",
    "name",  # for operators only (squeezectl top)
)
INT64_MAX = 2**63 - 1


def xen_overhead_kib(domain_type: str) -> int:
    """What Xen adds to maxmem beyond the guest's own memory."""
    return 0 if domain_type == "pv" else 1024


def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


_DECIMAL = re.compile(r"-?[0-9]{1,20}")


def parse_int(value: str | None) -> int | None:
    """A decimal integer as xenstore holds it; None if absent or not one
    (Python's int() would also take "1_000", " 7" or "+7")."""
    if value is None or not _DECIMAL.fullmatch(value):
        return None
    return int(value)


class InvalidValue(Exception):
    """A domain's memory keys hold values no arithmetic should see."""


def checked(keys: dict[str, str | None], key: str, lo: int, hi: int) -> int | None:
    """The key's value if absent (None) or an integer in [lo, hi]; else InvalidValue."""
    raw = keys.get(key)
    if raw is None:
        return None
    v = parse_int(raw)
    if v is None:
        raise InvalidValue(f"{key} = {raw[:40]!r} is not an integer")
    if not lo <= v <= hi:
        raise InvalidValue(f"{key} = {v} is outside [{lo}, {hi}]")
    return v
