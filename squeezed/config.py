"""squeezed configuration: defaults < /etc/squeezed.conf < conf.d/*.conf < command line.

The file format is upstream xcp_service's (``ocaml/xapi-idl/lib/xcp_service.ml``), so an
existing ``/etc/squeezed.conf`` keeps working:

* one ``key = value`` per line, spaces around ``=`` optional;
* ``#`` starts a comment anywhere on a line, even inside quotes (upstream cuts the line at
  the first ``#`` before anything else), so values cannot contain ``#``;
* one matching pair of single or double quotes around the value is removed, with no
  escapes (``key = ""`` is how to write an empty value);
* blank lines are ignored.

Two deliberate differences: upstream applies the command line *before* the files (files
win) and silently ignores unknown keys and malformed lines. Here the command line wins,
since that is what an operator typing a flag expects, and unknown keys and malformed lines
come back as warnings naming the file and line. Values are validated up front: a bad one
is a `ConfigError` naming the key, the value, where it came from and what is allowed.

Every key is also a command-line flag of the same name (``--key value`` or
``--key=value``); boolean keys may be given bare (``--manage-domain-zero``).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from logging.handlers import SysLogHandler
from typing import TYPE_CHECKING, Any, NamedTuple

from squeezed.xen.xenstore import DEFAULT_SOCKET as DEFAULT_XENSTORED_SOCKET
from squeezed.xen.xenstore import default_socket_path

if TYPE_CHECKING:
    from squeezed.engine.operations import EngineConfig

DEFAULT_CONFIG_FILE = "/etc/squeezed.conf"
DEFAULT_CONFIG_DIR = "/etc/squeezed.conf.d"

_GIB = 1024**3
_INT64_MAX = 2**63 - 1  # upstream stores byte counts as OCaml Int64


@dataclass(frozen=True)
class Config:
    """The effective configuration. Field names carry units; keys are in `KEYS`."""

    balance_check_interval_s: float = 10.0
    manage_domain_zero: bool = False
    domain_zero_dynamic_min_bytes: int = _GIB
    # None = "auto": dom0's allocation when squeezed first manages it
    domain_zero_dynamic_max_bytes: int | None = None
    boot_time_host_free_memory_minimal_constant_count: int = 10
    boot_time_host_free_memory_check_interval_s: float = 1.0
    boot_time_memory_file: str = "/var/run/nonpersistent/xapi/boot_time_memory"
    pidfile: str = "/var/run/squeezed.pid"  # "" = write no pidfile
    log: str = "syslog"  # "syslog", "syslog:FACILITY" or "stderr"
    log_facility: str = "local5"  # upstream's (squeezed.ml)
    loglevel: str = "info"  # debug | info | warning | error
    socket: str = "/var/xapi/memory"
    json_socket: str = "/var/xapi/memory.json"
    use_switch: bool = True  # serve the queue org.xen.xapi.memory on message-switch too
    switch_path: str = "/var/run/message-switch/sock"
    socket_mode: int = 0o600
    socket_group: str = ""  # "" = leave the group unchanged
    xenstored_socket: str = ""  # "" = $XENSTORED_PATH or DEFAULT_XENSTORED_SOCKET
    libxenctrl: str = ""  # "" = search the usual library names
    host_reserved_kib: int = 64 * 1024 + 8 * 1024
    balance_tolerance_kib: int = 512
    stuck_after_s: float = 5.0
    uncooperative_after_s: float = 20.0
    poll_min_s: float = 0.02
    poll_max_s: float = 1.0
    operation_timeout_s: float = 300.0
    metrics_textfile: str = ""  # "" = write no metrics file
    metrics_textfile_interval_s: float = 15.0

    def get(self, key: str) -> Any:
        """The value of a configuration key by its file/flag name."""
        return getattr(self, KEYS[key].attr)

    @property
    def log_target(self) -> str:
        """``"syslog"`` or ``"stderr"``."""
        return "stderr" if self.log == "stderr" else "syslog"

    @property
    def syslog_facility(self) -> str:
        """``log = syslog:FACILITY`` (upstream's spelling) wins over ``log-facility``."""
        _, _, suffix = self.log.partition(":")
        return suffix if suffix in _FACILITIES else self.log_facility

    def xenstored_socket_path(self, environ: Mapping[str, str] | None = None) -> str:
        return self.xenstored_socket or default_socket_path(environ)

    def engine_config(self) -> EngineConfig:
        """The engine's constants from this configuration."""
        # Imported here so that reading the configuration never drags in the engine.
        from squeezed.engine.operations import EngineConfig

        return EngineConfig(
            reserve_kib=self.host_reserved_kib,
            tolerance_kib=self.balance_tolerance_kib,
            stuck_after_s=self.stuck_after_s,
            uncooperative_after_s=self.uncooperative_after_s,
            min_poll_s=self.poll_min_s,
            max_poll_s=self.poll_max_s,
            operation_timeout_s=self.operation_timeout_s,
        )


DEFAULTS = Config()


class Origin(str):
    """Where a value came from: ``"default"``, ``"FILE:LINE"`` or ``"command line"``.

    A str, so it prints and compares as that text (``origin == "default"``), with the
    parts kept in `kind`, `path` and `line`.
    """

    kind: str  # "default" | "file" | "command line"
    path: str | None
    line: int | None

    def __new__(cls, kind: str, path: str | None = None, line: int | None = None) -> Origin:
        self = super().__new__(cls, f"{path}:{line}" if kind == "file" else kind)
        self.kind, self.path, self.line = kind, path, line
        return self


DEFAULT = Origin("default")
COMMAND_LINE = Origin("command line")

# Key name -> where its effective value came from; every key is present.
Provenance = dict[str, Origin]


class ConfigError(Exception):
    """A bad configuration value or command line; the daemon exits with status 2."""

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        value: str | None = None,
        origin: Origin | None = None,
        allowed: str | None = None,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.value = value
        self.origin = origin
        self.allowed = allowed

    @classmethod
    def invalid(cls, key: str, value: str, origin: Origin, allowed: str) -> ConfigError:
        return cls(
            f"{origin}: invalid value {value!r} for {key}: expected {allowed}",
            key=key,
            value=value,
            origin=origin,
            allowed=allowed,
        )


# --- value parsers: str -> value, raising ValueError; `allowed` says what is accepted ---

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_FACILITIES = frozenset(SysLogHandler.facility_names)
_LEVELS = ("debug", "info", "warning", "error")
_LEVEL_ALIASES = {"warn": "warning", "err": "error", "notice": "info", "critical": "error"}


def _parse_bool(s: str) -> bool:
    low = s.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(s)


def _parse_int(s: str) -> int:
    # Decimal first so "010" means ten; then 0x/0o/0b like upstream's Int64.of_string.
    try:
        return int(s, 10)
    except ValueError:
        return int(s, 0)


def _float_above_zero(s: str) -> float:
    v = float(s)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(s)
    return v


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(s: str) -> int:
        v = _parse_int(s)
        if not lo <= v <= _INT64_MAX:
            raise ValueError(s)
        return v

    return parse


def _bytes_or_auto(s: str) -> int | None:
    if s.lower() == "auto":
        return None
    return _int_at_least(1)(s)


def _abs_path(allow_empty: bool) -> Callable[[str], str]:
    def parse(s: str) -> str:
        if s == "" and allow_empty:
            return s
        if not s.startswith("/") or "\0" in s:
            raise ValueError(s)
        return s

    return parse


def _library(s: str) -> str:
    # A bare soname is searched for; anything with a slash must be absolute.
    if ("/" in s and not s.startswith("/")) or any(c.isspace() for c in s):
        raise ValueError(s)
    return s


def _log(s: str) -> str:
    low = s.lower()
    if low == "stderr" or re.fullmatch(r"syslog(:[A-Za-z0-9_-]+)?", low):
        return low
    raise ValueError(s)


def _facility(s: str) -> str:
    if s.lower() not in _FACILITIES:
        raise ValueError(s)
    return s.lower()


def _loglevel(s: str) -> str:
    low = s.lower()
    low = _LEVEL_ALIASES.get(low, low)
    if low not in _LEVELS:
        raise ValueError(s)
    return low


def _octal_mode(s: str) -> int:
    m = re.fullmatch(r"(?:0o)?([0-7]{1,4})", s.lower())
    if m is None or int(m.group(1), 8) > 0o777:
        raise ValueError(s)
    return int(m.group(1), 8)


def _group(s: str) -> str:
    if s and not re.fullmatch(r"[0-9]+|[A-Za-z_][A-Za-z0-9_.-]*\$?", s):
        raise ValueError(s)
    return s


# --- formatters: value -> the string that parses back to it ---


def _fmt_float(v: float) -> str:
    short = format(v, "g")
    return short if float(short) == v else repr(v)


def _fmt_bool(v: bool) -> str:
    return "true" if v else "false"


def _fmt_bytes_or_auto(v: int | None) -> str:
    return "auto" if v is None else str(v)


@dataclass(frozen=True)
class Key:
    name: str  # as written in the file and on the command line
    attr: str  # the Config field
    parse: Callable[[str], Any]
    fmt: Callable[[Any], str]
    allowed: str  # for error messages, --help and the documentation
    help: str
    reloadable: bool  # SIGHUP applies it without a restart
    boolean: bool = False


# fmt: off
_KEY_LIST = [
    Key("balance-check-interval", "balance_check_interval_s", _float_above_zero, _fmt_float,
        "a number of seconds > 0", "Seconds between periodic rebalancing checks.", True),
    Key("manage-domain-zero", "manage_domain_zero", _parse_bool, _fmt_bool,
        "a boolean (true/false, yes/no, on/off, 1/0)",
        "Balloon domain 0 like any other domain.", False, boolean=True),
    Key("domain-zero-dynamic-min", "domain_zero_dynamic_min_bytes", _int_at_least(0), str,
        "a non-negative integer number of bytes",
        "When managing domain 0, never balloon it below this many bytes.", False),
    Key("domain-zero-dynamic-max", "domain_zero_dynamic_max_bytes", _bytes_or_auto,
        _fmt_bytes_or_auto, "'auto' or a positive integer number of bytes",
        "When managing domain 0, never balloon it above this many bytes; "
        "'auto' means domain 0's allocation when squeezed first manages it "
        "(kept in xenstore's memory/dynamic-max across restarts).", False),
    Key("boot-time-host-free-memory-minimal-constant-count",
        "boot_time_host_free_memory_minimal_constant_count", _int_at_least(1), str,
        "an integer >= 1",
        "At start-up, host free memory counts as settled after this many "
        "consecutive readings within 1 MiB of each other.", False),
    Key("boot-time-host-free-memory-check-interval",
        "boot_time_host_free_memory_check_interval_s", _float_above_zero, _fmt_float,
        "a number of seconds > 0",
        "Seconds between those start-up readings of host free memory.", False),
    Key("boot-time-memory-file", "boot_time_memory_file", _abs_path(False), str,
        "an absolute path", "Where the settled boot-time host free memory is recorded.", False),
    Key("pidfile", "pidfile", _abs_path(True), str,
        "an absolute path, or empty for no pidfile", "File to write the daemon's PID to.",
        False),
    Key("log", "log", _log, str, "'syslog', 'syslog:FACILITY' or 'stderr'",
        "Where log messages go.", False),
    Key("log-facility", "log_facility", _facility, str,
        "a syslog facility name (" + ", ".join(sorted(_FACILITIES)) + ")",
        "Syslog facility, when logging to syslog.", False),
    Key("loglevel", "loglevel", _loglevel, str,
        "one of debug, info, warning, error", "Least severe level logged.", True),
    Key("socket", "socket", _abs_path(False), str, "an absolute path",
        "Unix socket of the XML-RPC Memory interface.", False),
    Key("json-socket", "json_socket", _abs_path(False), str, "an absolute path",
        "Unix socket of the JSON-RPC Memory interface.", False),
    Key("use-switch", "use_switch", _parse_bool, _fmt_bool,
        "a boolean (true/false, yes/no, on/off, 1/0)",
        "Also serve the Memory interface on the message-switch queue org.xen.xapi.memory, "
        "the way xenopsd and xapi call it by default (the sockets are served either way).",
        False, boolean=True),
    Key("switch-path", "switch_path", _abs_path(False), str, "an absolute path",
        "Unix socket of the message-switch.", False),
    Key("socket-mode", "socket_mode", _octal_mode, lambda v: f"{v:04o}",
        "an octal permission mode such as 0600, at most 0777",
        "Permissions of both sockets.", False),
    Key("socket-group", "socket_group", _group, str,
        "empty, a group name or a numeric group ID",
        "Group owning both sockets; empty leaves it unchanged.", False),
    Key("xenstored-socket", "xenstored_socket", _abs_path(True), str,
        "an absolute path, or empty",
        "xenstored's Unix socket; empty means $XENSTORED_PATH, else "
        + DEFAULT_XENSTORED_SOCKET + ".", False),
    Key("libxenctrl", "libxenctrl", _library, str,
        "empty, a library file name, or an absolute path",
        "The libxenctrl to load; empty searches the usual names.", False),
    Key("host-reserved-kib", "host_reserved_kib", _int_at_least(0), str,
        "a non-negative integer number of KiB",
        "Host free memory always kept back (Xen's low-memory pool plus slack).", True),
    Key("balance-tolerance-kib", "balance_tolerance_kib", _int_at_least(0), str,
        "a non-negative integer number of KiB",
        "The host counts as balanced when free memory is within this of the target.", True),
    Key("stuck-after", "stuck_after_s", _float_above_zero, _fmt_float,
        "a number of seconds > 0",
        "A balloon driver making no progress for this long is declared stuck.", True),
    Key("uncooperative-after", "uncooperative_after_s", _float_above_zero, _fmt_float,
        "a number of seconds > 0",
        "A ballooning domain that has missed its target for this long is flagged "
        "uncooperative (memory/uncooperative in xenstore, and in diagnostics); "
        "the flag goes once it reaches its target.", True),
    Key("poll-min", "poll_min_s", _float_above_zero, _fmt_float, "a number of seconds > 0",
        "Shortest wait between polls while memory is moving.", True),
    Key("poll-max", "poll_max_s", _float_above_zero, _fmt_float, "a number of seconds > 0",
        "Longest wait between polls while nothing moves.", True),
    Key("operation-timeout", "operation_timeout_s", _float_above_zero, _fmt_float,
        "a number of seconds > 0",
        "A squeezing operation still running after this long fails with Internal_error, "
        "gives back what it freed and releases the lock for the next caller.", True),
    Key("metrics-textfile", "metrics_textfile", _abs_path(True), str,
        "an absolute path, or empty",
        "Write metrics in the Prometheus text format (as squeezectl metrics prints them) to "
        "this file, for node_exporter's textfile collector (e.g. "
        "/var/lib/prometheus/node-exporter/squeezed.prom); empty writes none.", True),
    Key("metrics-textfile-interval", "metrics_textfile_interval_s", _float_above_zero,
        _fmt_float, "a number of seconds > 0",
        "Seconds between rewrites of metrics-textfile (each an atomic rename).", True),
]
# fmt: on

KEYS: dict[str, Key] = {k.name: k for k in _KEY_LIST}
RELOADABLE_KEYS: frozenset[str] = frozenset(k.name for k in _KEY_LIST if k.reloadable)

# Upstream xcp_service options that mean nothing here (no inventory,
# OCaml-specific tuning). Upstream's shipped squeezed.conf sets disable-logging-for.
IGNORED_UPSTREAM_KEYS = frozenset(
    {
        "disable-logging-for",
        "search-path",
        "inventory",
        "timeslice",
        "queue-name",
        "sockets-path",
        "sockets-group",
        "default-format",
    }
)

assert {k.attr for k in _KEY_LIST} == {f.name for f in fields(Config)}


@dataclass(frozen=True)
class Options:
    """Command-line flags that are not configuration keys."""

    config_file: str = DEFAULT_CONFIG_FILE
    config_dir: str = DEFAULT_CONFIG_DIR
    # None: run on Xen; "": `--simulate` alone (the default scenario); else the scenario.
    simulate: str | None = None
    daemon: bool = False
    print_config: bool = False
    version: bool = False
    help: bool = False
    argv: tuple[str, ...] = ()  # as given to load(), so that SIGHUP can load it again


class Loaded(NamedTuple):
    config: Config
    provenance: Provenance
    warnings: list[str]
    options: Options


# --- the file format ---


def parse_line(line: str) -> tuple[str, str] | None:
    """``(key, value)`` of one line, or None for a blank, comment or unparseable line.

    Mirrors upstream: cut at the first ``#``, trim, split at the first ``=``, strip one
    matching pair of quotes from the value.
    """
    text = line.split("#", 1)[0].strip()
    m = re.fullmatch(r"([^=\s]+)[ \t]*=[ \t]*(.*)", text)
    if m is None:
        return None
    key, value = m.group(1), m.group(2)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return key, value


def _is_blank(line: str) -> bool:
    return not line.split("#", 1)[0].strip()


def _read_file(path: str, out: dict[str, tuple[str, Origin]], warnings: list[str]) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read configuration file {path}: {e}") from e
    for lineno, line in enumerate(lines, start=1):
        if _is_blank(line):
            continue
        kv = parse_line(line)
        where = f"{path}:{lineno}"
        if kv is None:
            warnings.append(
                f"{where}: cannot parse {line.strip()!r}: expected 'key = value' (ignored)"
            )
            continue
        key, value = kv
        if key in KEYS:
            out[key] = (value, Origin("file", path, lineno))
        elif key in ("config", "config-dir"):
            warnings.append(f"{where}: {key} is only valid on the command line (ignored)")
        elif key in IGNORED_UPSTREAM_KEYS:
            warnings.append(f"{where}: {key} is an upstream option with no effect here (ignored)")
        else:
            warnings.append(f"{where}: unknown key {key!r} (ignored){_suggest(key)}")


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, KEYS, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _conf_d_files(directory: str, explicit: bool) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"configuration directory {directory} does not exist") from None
        return []
    except OSError as e:
        raise ConfigError(f"cannot read configuration directory {directory}: {e}") from e
    # Only *.conf, so that editor backups and package-manager leftovers are skipped;
    # byte order like upstream's `compare`, so 10-x.conf sorts before 20-y.conf.
    return [
        os.path.join(directory, n)
        for n in sorted(names, key=os.fsencode)
        if n.endswith(".conf") and os.path.isfile(os.path.join(directory, n))
    ]


# --- the command line ---


class _Argv(NamedTuple):
    settings: list[tuple[str, str]]  # (key, value) in command-line order
    options: dict[str, Any]  # Options fields given
    warnings: list[str]


_FLAGS = ("daemon", "print-config", "version", "help")
_OPTION_NAMES = frozenset(_FLAGS) | {"simulate", "config", "config-dir"}


def _long_form(word: str) -> str:
    """Upstream's single-dash spelling (OCaml Arg: -config FILE, -pidfile P,
    -key value, -key=value) as ours; anything else unchanged."""
    if word == "-h":
        return "--help"
    if word.startswith("-") and not word.startswith("--") and len(word) > 2:
        name = word[1:].partition("=")[0]
        if name in KEYS or name in IGNORED_UPSTREAM_KEYS or name in _OPTION_NAMES:
            return "-" + word
    return word


def _is_option(word: str) -> bool:
    return _long_form(word).startswith("--")


def _parse_argv(argv: Sequence[str]) -> _Argv:
    settings: list[tuple[str, str]] = []
    warnings: list[str] = []
    opts: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = _long_form(argv[i])
        i += 1
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"command line: unexpected argument {arg!r}; see --help")
        name, eq, inline = arg[2:].partition("=")
        value: str | None = inline if eq else None
        nxt = argv[i] if i < len(argv) else None
        key = KEYS.get(name)
        if name == "daemon" and value is None and nxt is not None and nxt.lower() in _TRUE | _FALSE:
            value, i = nxt, i + 1  # "-daemon true", as an upstream-style boolean
        if name == "daemon" and value is not None:
            if value.lower() not in _TRUE | _FALSE:
                raise ConfigError.invalid(name, value, COMMAND_LINE, "true or false")
            opts["daemon"] = value.lower() in _TRUE
            continue
        if name in _FLAGS:
            if value is not None:
                raise ConfigError(
                    f"command line: option --{name} takes no value",
                    key=name,
                    value=value,
                    origin=COMMAND_LINE,
                )
            opts[name.replace("-", "_")] = True
            continue
        if name == "simulate":
            # The scenario is optional: only a following non-flag word is one.
            if value is None and nxt is not None and not _is_option(nxt) \
                    and not nxt.startswith("-"):
                value, i = nxt, i + 1
            opts["simulate"] = value or ""
            continue
        if key is not None and key.boolean and value is None:
            # Bare flag means true; a following boolean word is its value.
            if nxt is not None and nxt.lower() in _TRUE | _FALSE:
                value, i = nxt, i + 1
            else:
                value = "true"
        if (
            name not in KEYS
            and name not in IGNORED_UPSTREAM_KEYS
            and name not in ("config", "config-dir")
        ):
            raise ConfigError(
                f"command line: unknown option --{name}{_suggest(name)}",
                key=name,
                origin=COMMAND_LINE,
            )
        if value is None:
            if nxt is None or _is_option(nxt):
                raise ConfigError(
                    f"command line: option --{name} needs a value", key=name, origin=COMMAND_LINE
                )
            value, i = nxt, i + 1
        if name in ("config", "config-dir"):
            opts["config_file" if name == "config" else "config_dir"] = value
        elif key is not None:
            settings.append((name, value))
        else:
            warnings.append(
                f"command line: --{name} is an upstream option with no effect here (ignored)"
            )
    return _Argv(settings, opts, warnings)


# --- putting it together ---


def load(
    argv: Sequence[str] | None = None,
    *,
    config_file: str = DEFAULT_CONFIG_FILE,
    config_dir: str = DEFAULT_CONFIG_DIR,
) -> Loaded:
    """The effective configuration from the files and `argv` (without the program name).

    `config_file`/`config_dir` are the defaults that ``--config``/``--config-dir``
    override; a missing default is fine, a missing file named on the command line is an
    error. With ``--help`` or ``--version`` nothing is read or validated, so both work
    even when the configuration is broken.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    long_forms = [_long_form(a) for a in argv]
    if any(a in ("--help", "--version") for a in long_forms):
        return Loaded(
            DEFAULTS,
            {name: DEFAULT for name in KEYS},
            [],
            Options(
                help="--help" in long_forms,
                version="--version" in long_forms,
                argv=tuple(argv),
            ),
        )
    cli, opts, warnings = _parse_argv(argv)
    explicit_file, explicit_dir = "config_file" in opts, "config_dir" in opts
    options = Options(
        **{"config_file": config_file, "config_dir": config_dir, **opts}, argv=tuple(argv)
    )
    config_file, config_dir = options.config_file, options.config_dir

    raw: dict[str, tuple[str, Origin]] = {}
    if os.path.exists(config_file) or explicit_file:
        _read_file(config_file, raw, warnings)
    for path in _conf_d_files(config_dir, explicit_dir):
        _read_file(path, raw, warnings)
    for name, value in cli:
        raw[name] = (value, COMMAND_LINE)

    values: dict[str, Any] = {}
    provenance: Provenance = {name: DEFAULT for name in KEYS}
    for name, (text, origin) in raw.items():
        key = KEYS[name]
        try:
            values[key.attr] = key.parse(text.strip())
        except ValueError:
            raise ConfigError.invalid(name, text, origin, key.allowed) from None
        provenance[name] = origin
    config = replace(DEFAULTS, **values)
    _check_consistency(config, provenance)

    # log = syslog:NAME (upstream's shipped file says syslog:squeezed): a facility
    # name sets the facility, any other NAME is the syslog identifier.
    return Loaded(config, provenance, warnings, options)


def _check_consistency(config: Config, provenance: Provenance) -> None:
    """Constraints between keys; the error names the key set last (or explicitly)."""

    def fail(key: str, other: str, relation: str) -> None:
        # Blame whichever of the two was set explicitly, preferring `key`.
        if provenance[key] == DEFAULT and provenance[other] != DEFAULT:
            key, other = other, key
            relation = {"at most": "at least", "at least": "at most"}.get(relation, relation)
        raise ConfigError.invalid(
            key,
            KEYS[key].fmt(config.get(key)),
            provenance[key],
            f"a value {relation} {other} ({KEYS[other].fmt(config.get(other))}, "
            f"from {provenance[other]})",
        )

    if config.poll_min_s > config.poll_max_s:
        fail("poll-min", "poll-max", "at most")
    dmax = config.domain_zero_dynamic_max_bytes
    if dmax is not None and config.domain_zero_dynamic_min_bytes > dmax:
        fail("domain-zero-dynamic-min", "domain-zero-dynamic-max", "at most")
    if config.socket == config.json_socket:
        fail("json-socket", "socket", "different from")


def _quote(text: str) -> str:
    # Quote what would not survive the parser bare: empty, spaces at the ends, quotes.
    if text == "" or text != text.strip() or text[0] in "\"'":
        return f"'{text}'" if '"' in text else f'"{text}"'
    return text


def format_config(config: Config, provenance: Mapping[str, Origin]) -> str:
    """Every key = value with where it came from; itself a valid configuration file."""
    rows = [
        (f"{name} = {_quote(k.fmt(config.get(name)))}", str(provenance.get(name, DEFAULT)))
        for name, k in KEYS.items()
    ]
    width = max(len(r[0]) for r in rows)
    out = ["# squeezed effective configuration: key = value  # where it came from",
           "# precedence: command line > " + DEFAULT_CONFIG_DIR + "/*.conf > file > default;",
           "# upstream differs: its files override its command line (docs/operations.md)"]
    out += [f"{setting:<{width}}  # {origin}" for setting, origin in rows]
    return "\n".join(out) + "\n"


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
    updated = replace(current, **{KEYS[n].attr: new.get(n) for n in applied})
    return updated, applied, need_restart


def help_text(prog: str = "squeezed") -> str:
    """The --help text: the option flags, then every configuration key."""
    lines = [
        f"usage: {prog} [OPTIONS] [--KEY VALUE | --KEY=VALUE ...]",
        "",
        "Xen host memory-ballooning daemon (xcp-idl Memory interface).",
        "",
        "options:",
        f"  --config FILE          configuration file (default {DEFAULT_CONFIG_FILE})",
        "  --config-dir DIR       directory of *.conf fragments read after it",
        f"                         (default {DEFAULT_CONFIG_DIR})",
        "  --simulate [SCENARIO]  run against a simulated host instead of Xen",
        "  --daemon               detach from the terminal (not under systemd)",
        "  --print-config         print the effective configuration and exit",
        "  --version              print the version and exit",
        "  -h, --help             print this help and exit",
        "",
        "Upstream's single-dash forms work too: -config FILE, -pidfile P, -daemon,",
        "-KEY VALUE, -KEY=VALUE. The command line overrides the files (upstream: the",
        "files override the command line).",
        "",
        "configuration keys (in the configuration file as KEY = VALUE):",
    ]
    for name, k in KEYS.items():
        default = _quote(k.fmt(DEFAULTS.get(name)))
        lines.append(f"  --{name} {'[VALUE]' if k.boolean else 'VALUE'}")
        lines += textwrap.wrap(
            f"{k.help} Expects {k.allowed}; default {default}.",
            width=79,
            initial_indent=" " * 6,
            subsequent_indent=" " * 6,
            break_on_hyphens=False,
        )
    lines += ["", "exit status: 0 ok, 1 runtime failure, 2 configuration or usage error"]
    return "\n".join(lines) + "\n"
