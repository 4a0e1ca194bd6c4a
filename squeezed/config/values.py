"""The configuration's value syntax: parsers (text -> value, raising ValueError) and
formatters (value -> the text that parses back to it). The key table (`keys.py`) pairs
them with each key and says in words what each parser accepts."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from logging.handlers import SysLogHandler

INT64_MAX = 2**63 - 1  # upstream stores byte counts as OCaml Int64

TRUE = frozenset({"true", "yes", "1", "on"})
FALSE = frozenset({"false", "no", "0", "off"})
FACILITIES = frozenset(SysLogHandler.facility_names)
_LEVELS = ("debug", "info", "warning", "error")
_LEVEL_ALIASES = {"warn": "warning", "err": "error", "notice": "info", "critical": "error"}


def parse_bool(s: str) -> bool:
    low = s.lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    raise ValueError(s)


def _parse_int(s: str) -> int:
    # Decimal first so "010" means ten; then 0x/0o/0b like upstream's Int64.of_string.
    try:
        return int(s, 10)
    except ValueError:
        return int(s, 0)


def float_above_zero(s: str) -> float:
    v = float(s)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(s)
    return v


def int_at_least(lo: int) -> Callable[[str], int]:
    def parse(s: str) -> int:
        v = _parse_int(s)
        if not lo <= v <= INT64_MAX:
            raise ValueError(s)
        return v

    return parse


def bytes_or_auto(s: str) -> int | None:
    if s.lower() == "auto":
        return None
    return int_at_least(1)(s)


def abs_path(allow_empty: bool) -> Callable[[str], str]:
    def parse(s: str) -> str:
        if s == "" and allow_empty:
            return s
        if not s.startswith("/") or "\0" in s:
            raise ValueError(s)
        return s

    return parse


def library(s: str) -> str:
    # A bare soname is searched for; anything with a slash must be absolute.
    if ("/" in s and not s.startswith("/")) or any(c.isspace() for c in s):
        raise ValueError(s)
    return s


def log(s: str) -> str:
    # Only the syntax: what syslog:NAME means is squeezed.logsetup.log_target's to say.
    low = s.lower()
    if low == "stderr" or re.fullmatch(r"syslog(:[A-Za-z0-9_-]+)?", low):
        return low
    raise ValueError(s)


def facility(s: str) -> str:
    if s.lower() not in FACILITIES:
        raise ValueError(s)
    return s.lower()


def loglevel(s: str) -> str:
    low = s.lower()
    low = _LEVEL_ALIASES.get(low, low)
    if low not in _LEVELS:
        raise ValueError(s)
    return low


def octal_mode(s: str) -> int:
    m = re.fullmatch(r"(?:0o)?([0-7]{1,4})", s.lower())
    if m is None or int(m.group(1), 8) > 0o777:
        raise ValueError(s)
    return int(m.group(1), 8)


def group(s: str) -> str:
    if s and not re.fullmatch(r"[0-9]+|[A-Za-z_][A-Za-z0-9_.-]*\$?", s):
        raise ValueError(s)
    return s


# --- formatters: value -> the string that parses back to it ---


def fmt_float(v: float) -> str:
    short = format(v, "g")
    return short if float(short) == v else repr(v)


def fmt_bool(v: bool) -> str:
    return "true" if v else "false"


def fmt_bytes_or_auto(v: int | None) -> str:
    return "auto" if v is None else str(v)


def fmt_octal_mode(v: int) -> str:
    return f"{v:04o}"


def quote(text: str) -> str:
    """`text` as a file value: quoted when it would not survive the parser bare
    (empty, spaces at the ends, a leading quote)."""
    if text == "" or text != text.strip() or text[0] in "\"'":
        return f"'{text}'" if '"' in text else f'"{text}"'
    return text
