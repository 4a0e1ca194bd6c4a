"""The one table of configuration keys: the `Config` they fill, and for each key its
file/flag name, parser, formatter, what it accepts, its help and whether SIGHUP
applies it."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from squeezed.config import values as v
from squeezed.logsetup import DEFAULT_FACILITY
from squeezed.xen.xs_link import DEFAULT_SOCKET as DEFAULT_XENSTORED_SOCKET

if TYPE_CHECKING:
    from squeezed.engine.operations import EngineConfig

_GIB = 1024**3

# What a key's value may be (the union of `Config`'s field types).
Value = bool | int | float | str | None


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
    log_facility: str = DEFAULT_FACILITY  # upstream's, local5 (squeezed.ml)
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

    def get(self, key: str) -> Value:
        """The value of a configuration key by its file/flag name."""
        value: Value = getattr(self, KEYS[key].attr)
        return value

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

T = TypeVar("T", bound=Value)


@dataclass(frozen=True)
class Key(Generic[T]):
    """One key; `T` is its value's type (the type of its `Config` field)."""

    name: str  # as written in the file and on the command line
    attr: str  # the Config field
    parse: Callable[[str], T]  # raises ValueError
    fmt: Callable[[T], str]
    allowed: str  # for error messages, --help and the documentation
    help: str
    reloadable: bool  # SIGHUP applies it without a restart
    boolean: bool = False


# Each entry is a Key[T] for its own T; the table mixes them, hence Key[Any]. That each
# formatter reads back what its parser makes is tested (tests/test_config.py).
# fmt: off
_KEY_LIST: list[Key[Any]] = [
    Key("balance-check-interval", "balance_check_interval_s", v.float_above_zero, v.fmt_float,
        "a number of seconds > 0", "Seconds between periodic rebalancing checks.", True),
    Key("manage-domain-zero", "manage_domain_zero", v.parse_bool, v.fmt_bool,
        "a boolean (true/false, yes/no, on/off, 1/0)",
        "Balloon domain 0 like any other domain.", False, boolean=True),
    Key("domain-zero-dynamic-min", "domain_zero_dynamic_min_bytes", v.int_at_least(0), str,
        "a non-negative integer number of bytes",
        "When managing domain 0, never balloon it below this many bytes.", False),
    Key("domain-zero-dynamic-max", "domain_zero_dynamic_max_bytes", v.bytes_or_auto,
        v.fmt_bytes_or_auto, "'auto' or a positive integer number of bytes",
        "When managing domain 0, never balloon it above this many bytes; "
        "'auto' means domain 0's allocation when squeezed first manages it "
        "(kept in xenstore's memory/dynamic-max across restarts).", False),
    Key("boot-time-host-free-memory-minimal-constant-count",
        "boot_time_host_free_memory_minimal_constant_count", v.int_at_least(1), str,
        "an integer >= 1",
        "At start-up, host free memory counts as settled after this many "
        "consecutive readings within 1 MiB of each other.", False),
    Key("boot-time-host-free-memory-check-interval",
        "boot_time_host_free_memory_check_interval_s", v.float_above_zero, v.fmt_float,
        "a number of seconds > 0",
        "Seconds between those start-up readings of host free memory.", False),
    Key("boot-time-memory-file", "boot_time_memory_file", v.abs_path(False), str,
        "an absolute path", "Where the settled boot-time host free memory is recorded.", False),
    Key("pidfile", "pidfile", v.abs_path(True), str,
        "an absolute path, or empty for no pidfile", "File to write the daemon's PID to.",
        False),
    Key("log", "log", v.log, str, "'syslog', 'syslog:FACILITY' or 'stderr'",
        "Where log messages go.", False),
    Key("log-facility", "log_facility", v.facility, str,
        "a syslog facility name (" + ", ".join(sorted(v.FACILITIES)) + ")",
        "Syslog facility, when logging to syslog.", False),
    Key("loglevel", "loglevel", v.loglevel, str,
        "one of debug, info, warning, error", "Least severe level logged.", True),
    Key("socket", "socket", v.abs_path(False), str, "an absolute path",
        "Unix socket of the XML-RPC Memory interface.", False),
    Key("json-socket", "json_socket", v.abs_path(False), str, "an absolute path",
        "Unix socket of the JSON-RPC Memory interface.", False),
    Key("use-switch", "use_switch", v.parse_bool, v.fmt_bool,
        "a boolean (true/false, yes/no, on/off, 1/0)",
        "Also serve the Memory interface on the message-switch queue org.xen.xapi.memory, "
        "the way xenopsd and xapi call it by default (the sockets are served either way).",
        False, boolean=True),
    Key("switch-path", "switch_path", v.abs_path(False), str, "an absolute path",
        "Unix socket of the message-switch.", False),
    Key("socket-mode", "socket_mode", v.octal_mode, v.fmt_octal_mode,
        "an octal permission mode such as 0600, at most 0777",
        "Permissions of both sockets.", False),
    Key("socket-group", "socket_group", v.group, str,
        "empty, a group name or a numeric group ID",
        "Group owning both sockets; empty leaves it unchanged.", False),
    Key("xenstored-socket", "xenstored_socket", v.abs_path(True), str,
        "an absolute path, or empty",
        "xenstored's Unix socket; empty means $XENSTORED_PATH, else "
        + DEFAULT_XENSTORED_SOCKET + ".", False),
    Key("libxenctrl", "libxenctrl", v.library, str,
        "empty, a library file name, or an absolute path",
        "The libxenctrl to load; empty searches the usual names.", False),
    Key("host-reserved-kib", "host_reserved_kib", v.int_at_least(0), str,
        "a non-negative integer number of KiB",
        "Host free memory always kept back (Xen's low-memory pool plus slack).", True),
    Key("balance-tolerance-kib", "balance_tolerance_kib", v.int_at_least(0), str,
        "a non-negative integer number of KiB",
        "The host counts as balanced when free memory is within this of the target.", True),
    Key("stuck-after", "stuck_after_s", v.float_above_zero, v.fmt_float,
        "a number of seconds > 0",
        "A balloon driver making no progress for this long is declared stuck.", True),
    Key("uncooperative-after", "uncooperative_after_s", v.float_above_zero, v.fmt_float,
        "a number of seconds > 0",
        "A ballooning domain that has missed its target for this long is flagged "
        "uncooperative (memory/uncooperative in xenstore, and in diagnostics); "
        "the flag goes once it reaches its target.", True),
    Key("poll-min", "poll_min_s", v.float_above_zero, v.fmt_float, "a number of seconds > 0",
        "Shortest wait between polls while memory is moving.", True),
    Key("poll-max", "poll_max_s", v.float_above_zero, v.fmt_float, "a number of seconds > 0",
        "Longest wait between polls while nothing moves.", True),
    Key("operation-timeout", "operation_timeout_s", v.float_above_zero, v.fmt_float,
        "a number of seconds > 0",
        "A squeezing operation still running after this long fails with Internal_error, "
        "gives back what it freed and releases the lock for the next caller.", True),
    Key("metrics-textfile", "metrics_textfile", v.abs_path(True), str,
        "an absolute path, or empty",
        "Write metrics in the Prometheus text format (as squeezectl metrics prints them) to "
        "this file, for node_exporter's textfile collector (e.g. "
        "/var/lib/prometheus/node-exporter/squeezed.prom); empty writes none.", True),
    Key("metrics-textfile-interval", "metrics_textfile_interval_s", v.float_above_zero,
        v.fmt_float, "a number of seconds > 0",
        "Seconds between rewrites of metrics-textfile (each an atomic rename).", True),
]
# fmt: on

KEYS: dict[str, Key[Any]] = {k.name: k for k in _KEY_LIST}
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


def suggest(key: str) -> str:
    """'; did you mean ...?' for a misspelt key, or ''."""
    close = difflib.get_close_matches(key, KEYS, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def with_values(config: Config, values: Mapping[str, Value]) -> Config:
    """`config` with the keys named in `values` (file/flag names) set."""
    # Each value comes from its own key's parser, so it fits its field (Key[T]); replace()
    # cannot see that through a mapping, hence Any here.
    by_attr: dict[str, Any] = {KEYS[name].attr: value for name, value in values.items()}
    return replace(config, **by_attr)
