"""Configuration: file format, precedence, validation, --print-config."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from squeezed import config as c
from squeezed.config import DEFAULTS, KEYS, ConfigError, Origin, load
from squeezed.logsetup import log_target
from squeezed.xen.xenstore import XenstoreClient, default_socket_path

ROOT = Path(__file__).resolve().parent.parent


def _load(tmp_path: Path, argv: list[str] | None = None, main: str | None = None,
          fragments: dict[str, str] | None = None) -> c.Loaded:
    """load() with a private config file and directory (never the host's /etc)."""
    conf = tmp_path / "squeezed.conf"
    confd = tmp_path / "squeezed.conf.d"
    confd.mkdir(exist_ok=True)
    # Each call starts afresh, so one test can load several configurations.
    conf.unlink(missing_ok=True)
    for old in confd.iterdir():
        old.unlink()
    if main is not None:
        conf.write_text(main)
    for name, text in (fragments or {}).items():
        (confd / name).write_text(text)
    return load(argv or [], config_file=str(conf), config_dir=str(confd))


# --- defaults and precedence ---


def test_defaults_without_any_file(tmp_path: Path) -> None:
    cfg, prov, warnings, opts = _load(tmp_path)
    assert cfg == DEFAULTS
    assert set(prov) == set(KEYS) and all(o == "default" for o in prov.values())
    assert warnings == []
    assert opts == c.Options(config_file=str(tmp_path / "squeezed.conf"),
                             config_dir=str(tmp_path / "squeezed.conf.d"))


def test_documented_defaults() -> None:
    d = DEFAULTS
    assert d.balance_check_interval_s == 10.0 and d.manage_domain_zero is False
    assert d.domain_zero_dynamic_min_bytes == 1 << 30 and d.domain_zero_dynamic_max_bytes is None
    assert d.boot_time_host_free_memory_minimal_constant_count == 10
    assert d.boot_time_host_free_memory_check_interval_s == 1.0
    assert d.boot_time_memory_file == "/var/run/nonpersistent/xapi/boot_time_memory"
    assert d.pidfile == "/var/run/squeezed.pid"
    assert (d.log, d.log_facility, d.loglevel) == ("syslog", "local5", "info")
    assert (d.socket, d.json_socket) == ("/var/xapi/memory", "/var/xapi/memory.json")
    assert (d.socket_mode, d.socket_group) == (0o600, "")
    assert (d.xenstored_socket, d.libxenctrl) == ("", "")
    assert (d.host_reserved_kib, d.balance_tolerance_kib) == (73728, 512)
    assert (d.stuck_after_s, d.uncooperative_after_s) == (5.0, 20.0)
    assert (d.poll_min_s, d.poll_max_s) == (0.02, 1.0)


def test_precedence_default_file_fragments_in_order_flags(tmp_path: Path) -> None:
    main = "poll-max = 9\npoll-min = 0.1\nstuck-after = 6\nloglevel = debug\n"
    fragments = {
        "20-second.conf": "stuck-after = 8\nloglevel = error\n",
        "10-first.conf": "poll-min = 0.2\nstuck-after = 7\nloglevel = warning\n",
        # Not *.conf: an editor backup and a README are skipped.
        "30-third.conf~": "poll-max = 99\n",
        "README": "poll-max = 99\n",
    }
    cfg, prov, warnings, _ = _load(tmp_path, ["--loglevel", "info"], main, fragments)
    assert warnings == []
    assert cfg.poll_max_s == 9.0  # file only
    assert cfg.poll_min_s == 0.2  # fragment beats file
    assert cfg.stuck_after_s == 8.0  # later fragment beats earlier
    assert cfg.loglevel == "info"  # command line beats everything
    assert cfg.balance_check_interval_s == 10.0  # default
    confd = tmp_path / "squeezed.conf.d"
    assert prov["poll-max"] == f"{tmp_path / 'squeezed.conf'}:1"
    assert prov["poll-min"] == f"{confd / '10-first.conf'}:1"
    assert prov["stuck-after"] == f"{confd / '20-second.conf'}:1"
    assert prov["stuck-after"].kind == "file" and prov["stuck-after"].line == 1
    assert prov["loglevel"] == "command line" and prov["loglevel"].kind == "command line"
    assert prov["balance-check-interval"] == "default"


def test_fragments_sort_bytewise(tmp_path: Path) -> None:
    cfg, _, _, _ = _load(tmp_path, fragments={"9-b.conf": "poll-max = 3\n",
                                              "10-a.conf": "poll-max = 2\n"})
    assert cfg.poll_max_s == 3.0  # "10-a" < "9-b", so 9-b is read last


def test_later_line_in_same_file_wins(tmp_path: Path) -> None:
    cfg, prov, _, _ = _load(tmp_path, main="poll-max = 2\n\npoll-max = 3\n")
    assert cfg.poll_max_s == 3.0 and prov["poll-max"].line == 3


def test_explicit_config_and_config_dir(tmp_path: Path) -> None:
    other = tmp_path / "other.conf"
    other.write_text("poll-max = 4\n")
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.conf").write_text("poll-min = 0.5\n")
    cfg, _, _, opts = _load(tmp_path, ["--config", str(other), f"--config-dir={d}"],
                            main="poll-max = 99\n")
    assert (cfg.poll_max_s, cfg.poll_min_s) == (4.0, 0.5)
    assert (opts.config_file, opts.config_dir) == (str(other), str(d))


def test_explicit_missing_file_or_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.conf"):
        _load(tmp_path, ["--config", str(tmp_path / "nope.conf")])
    with pytest.raises(ConfigError, match="does not exist"):
        _load(tmp_path, ["--config-dir", str(tmp_path / "nope.d")])


def test_unreadable_files_are_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_bytes(b"poll-max = \xff\xfe\n")
    with pytest.raises(ConfigError, match="bad.conf"):
        _load(tmp_path, ["--config", str(bad)])
    with pytest.raises(ConfigError, match="cannot read"):
        _load(tmp_path, ["--config", str(tmp_path)])  # a directory


# --- the file format ---


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("key=value", ("key", "value")),
        ("key = value", ("key", "value")),
        ("  key\t=\tvalue  ", ("key", "value")),
        ("key = value # comment", ("key", "value")),
        ('key = "quoted value"', ("key", "quoted value")),
        ("key = 'single'", ("key", "single")),
        ('key = ""', ("key", "")),
        ("key = ''", ("key", "")),
        ("key = \"mismatched'", ("key", "\"mismatched'")),
        ('key = "a"b"', ("key", 'a"b')),  # only the outer pair goes, no escapes
        ('key = "a#b"', ("key", '"a')),  # '#' cuts the line even inside quotes (upstream)
        ("key = a = b", ("key", "a = b")),
        ("key =", ("key", "")),
        ("# key = value", None),
        ("", None),
        ("   ", None),
        ("no equals sign", None),
        ("two words = x", None),
        ("= value", None),
    ],
)
def test_parse_line(line: str, expected: tuple[str, str] | None) -> None:
    assert c.parse_line(line) == expected


def test_quotes_comments_blank_lines_in_a_file(tmp_path: Path) -> None:
    main = (
        "# squeezed.conf\n"
        "\n"
        "socket = '/run/my memory'   # spaces survive inside quotes\n"
        '   json-socket="/run/memory.json"\n'
        "socket-group = \"\"\n"
        "\t\n"
        "manage-domain-zero = YES # case-insensitive\n"
    )
    cfg, prov, warnings, _ = _load(tmp_path, main=main)
    assert warnings == []
    assert cfg.socket == "/run/my memory"
    assert cfg.json_socket == "/run/memory.json"
    assert cfg.socket_group == "" and prov["socket-group"].line == 5
    assert cfg.manage_domain_zero is True and prov["manage-domain-zero"].line == 7


def test_upstream_shipped_file_loads(tmp_path: Path) -> None:
    # The text of upstream's scripts/squeezed.conf (facts: its keys and values).
    main = (
        "# Configuration file for squeezed\n\n"
        "log=syslog:squeezed\npidfile=/var/run/squeezed.pid\n\n"
        "disable-logging-for=http\n\nbalance-check-interval=10\n\n"
        "# manage-domain-zero=false\n# domain-zero-dynamic-min = 1073741824\n"
        "# domain-zero-dynamic-max = auto\n"
    )
    cfg, _, warnings, _ = _load(tmp_path, main=main)
    # upstream's: "squeezed" is the syslog identifier, the facility stays local5
    assert log_target(cfg.log, cfg.log_facility) == ("syslog", "local5", "squeezed")
    assert cfg.balance_check_interval_s == 10.0
    conf = tmp_path / "squeezed.conf"
    assert warnings == [
        f"{conf}:6: disable-logging-for is an upstream option with no effect here (ignored)",
    ]  # log = syslog:squeezed is accepted silently: "squeezed" is the syslog identifier


def test_upstream_single_dash_command_line(tmp_path: Path) -> None:
    """SQUEEZED_OPTIONS written for upstream (OCaml Arg: -key value, -key=value)."""
    conf = tmp_path / "other.conf"
    conf.write_text("balance-check-interval = 3\n")
    cfg, prov, warnings, opts = _load(tmp_path, [
        "-config", str(conf), "-pidfile", "/run/sq.pid", "-daemon",
        "-loglevel=debug", "-manage-domain-zero", "true", "-disable-logging-for", "http",
    ])
    assert opts.config_file == str(conf) and opts.daemon is True
    assert cfg.pidfile == "/run/sq.pid" and cfg.loglevel == "debug"
    assert cfg.manage_domain_zero is True and cfg.balance_check_interval_s == 3.0
    assert prov["pidfile"].kind == "command line"
    assert any("disable-logging-for" in w for w in warnings)
    _, _, _, opts = _load(tmp_path, ["-daemon", "false", "-h"])
    assert opts.help
    _, _, _, opts = _load(tmp_path, ["-daemon", "false"])
    assert opts.daemon is False
    with pytest.raises(ConfigError, match="unexpected argument '-nonsense'"):
        _load(tmp_path, ["-nonsense", "1"])


def test_log_syslog_facility_suffix(tmp_path: Path) -> None:
    cfg, _, warnings, _ = _load(tmp_path, ["--log", "syslog:local5", "--log-facility", "user"])
    assert warnings == []
    assert log_target(cfg.log, cfg.log_facility)[:2] == ("syslog", "local5")
    cfg, _, _, _ = _load(tmp_path, ["--log=stderr"])
    assert log_target(cfg.log, cfg.log_facility).kind == "stderr"


# --- warnings ---


def test_unknown_key_warning_names_file_and_line(tmp_path: Path) -> None:
    main = "poll-max = 2\n\n# c\npol-min = 0.1\nfrobnicate = 1\n"
    _, _, warnings, _ = _load(tmp_path, main=main)
    conf = tmp_path / "squeezed.conf"
    assert warnings == [
        f"{conf}:4: unknown key 'pol-min' (ignored); did you mean 'poll-min'?",
        f"{conf}:5: unknown key 'frobnicate' (ignored)",
    ]


def test_malformed_and_misplaced_lines_warn(tmp_path: Path) -> None:
    _, _, warnings, _ = _load(tmp_path, fragments={"a.conf": "just words\nconfig = /x\n"})
    frag = tmp_path / "squeezed.conf.d" / "a.conf"
    assert warnings == [
        f"{frag}:1: cannot parse 'just words': expected 'key = value' (ignored)",
        f"{frag}:2: config is only valid on the command line (ignored)",
    ]


# --- values: every key, good and bad ---

GOOD: dict[str, list[tuple[str, object]]] = {
    "balance-check-interval": [("2.5", 2.5), ("1e1", 10.0), ("3", 3.0)],
    "manage-domain-zero": [(w, w.lower() in ("true", "yes", "1", "on"))
                           for w in ("true", "false", "yes", "no", "1", "0", "on", "off",
                                     "TRUE", "No", "On")],
    "domain-zero-dynamic-min": [("0", 0), ("536870912", 1 << 29), ("0x40000000", 1 << 30),
                                ("010", 10)],
    "domain-zero-dynamic-max": [("auto", None), ("AUTO", None), ("2147483648", 1 << 31)],
    "boot-time-host-free-memory-minimal-constant-count": [("1", 1), ("25", 25)],
    "boot-time-host-free-memory-check-interval": [("0.5", 0.5)],
    "boot-time-memory-file": [("/tmp/btm", "/tmp/btm")],
    "pidfile": [("/run/s.pid", "/run/s.pid"), ("", "")],
    "log": [("syslog", "syslog"), ("stderr", "stderr"), ("SysLog:Local3", "syslog:local3")],
    "log-facility": [("local7", "local7"), ("USER", "user")],
    "loglevel": [("debug", "debug"), ("INFO", "info"), ("warn", "warning"), ("err", "error")],
    "socket": [("/run/m", "/run/m")],
    "json-socket": [("/run/m.json", "/run/m.json")],
    "use-switch": [("false", False), ("yes", True)],
    "switch-path": [("/run/ms/sock", "/run/ms/sock")],
    "socket-mode": [("0660", 0o660), ("660", 0o660), ("0o640", 0o640), ("0", 0)],
    "socket-group": [("xapi", "xapi"), ("123", "123"), ("", "")],
    "xenstored-socket": [("/run/xs", "/run/xs"), ("", "")],
    "libxenctrl": [("", ""), ("libxenctrl.so.4.17", "libxenctrl.so.4.17"),
                   ("/opt/xen/lib/libxenctrl.so", "/opt/xen/lib/libxenctrl.so")],
    "host-reserved-kib": [("0", 0), ("65536", 65536)],
    "balance-tolerance-kib": [("0", 0), ("1024", 1024)],
    "stuck-after": [("2", 2.0)],
    "uncooperative-after": [("60", 60.0)],
    "poll-min": [("0.001", 0.001)],
    "poll-max": [("5", 5.0)],
    "operation-timeout": [("600", 600.0), ("2.5", 2.5)],
    "metrics-textfile": [("", ""), ("/var/lib/node-exporter/squeezed.prom",
                                    "/var/lib/node-exporter/squeezed.prom")],
    "metrics-textfile-interval": [("30", 30.0), ("0.5", 0.5)],
}  # fmt: skip

BAD: dict[str, list[str]] = {
    "balance-check-interval": ["0", "-1", "abc", "", "inf", "nan"],
    "manage-domain-zero": ["maybe", "2", ""],
    "domain-zero-dynamic-min": ["-1", "1G", "1.5", "", "auto", str(2**63)],
    "domain-zero-dynamic-max": ["0", "-5", "1G", "", "automatic"],
    "boot-time-host-free-memory-minimal-constant-count": ["0", "-1", "2.5", "ten", ""],
    "boot-time-host-free-memory-check-interval": ["0", "-0.5", "x", ""],
    "boot-time-memory-file": ["relative/path", ""],
    "pidfile": ["squeezed.pid"],
    "log": ["file", "/var/log/squeezed.log", "syslog:", "journal", ""],
    "log-facility": ["local8", "nosuch", ""],
    "loglevel": ["verbose", "5", ""],
    "socket": ["memory", ""],
    "json-socket": ["memory.json", ""],
    "use-switch": ["maybe", ""],
    "switch-path": ["sock", ""],
    "socket-mode": ["0800", "1777", "rw-------", "0x1ff", ""],
    "socket-group": ["two words", "a:b", "-x"],
    "xenstored-socket": ["run/xenstored/socket"],
    "libxenctrl": ["lib/libxenctrl.so", "lib xenctrl"],
    "host-reserved-kib": ["-1", "64M", ""],
    "balance-tolerance-kib": ["-1", "0.5", ""],
    "stuck-after": ["0", "-3", "soon"],
    "uncooperative-after": ["0", "never"],
    "poll-min": ["0", "-0.01", "fast"],
    "poll-max": ["0", "slow"],
    "operation-timeout": ["0", "-1", "never"],
    "metrics-textfile": ["squeezed.prom", "relative/x.prom"],
    "metrics-textfile-interval": ["0", "-1", "often"],
}


def test_tables_cover_every_key() -> None:
    assert set(GOOD) == set(KEYS) and set(BAD) == set(KEYS)


@pytest.mark.parametrize(("key", "text", "value"),
                         [(k, t, v) for k, vs in GOOD.items() for t, v in vs])
def test_good_values(tmp_path: Path, key: str, text: str, value: object) -> None:
    # Other keys are moved out of the way of cross-key constraints.
    extra = {"poll-min": ["--poll-max", "10"], "domain-zero-dynamic-min": [
        "--domain-zero-dynamic-max", "auto"]}.get(key, [])
    from_flag = _load(tmp_path, [f"--{key}={text}", *extra]).config.get(key)
    from_file = _load(tmp_path, extra, main=f"{key} = '{text}'\n").config.get(key)
    assert from_flag == value and from_file == value


@pytest.mark.parametrize(("key", "text"), [(k, t) for k, ts in BAD.items() for t in ts])
def test_bad_value_from_the_command_line(tmp_path: Path, key: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, [f"--{key}={text}"])
    e = info.value
    assert (e.key, e.value, e.origin, e.allowed) == (key, text, "command line", KEYS[key].allowed)
    assert str(e) == f"command line: invalid value {text!r} for {key}: expected {e.allowed}"


@pytest.mark.parametrize(("key", "text"), [(k, t) for k, ts in BAD.items() for t in ts])
def test_bad_value_from_a_file(tmp_path: Path, key: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, fragments={"x.conf": f"# first\n{key} = \"{text}\"\n"})
    e = info.value
    where = f"{tmp_path / 'squeezed.conf.d' / 'x.conf'}:2"
    assert (e.key, e.value, e.origin, e.allowed) == (key, text, where, KEYS[key].allowed)
    assert isinstance(e.origin, Origin) and e.origin.line == 2
    for part in (key, repr(text), where, KEYS[key].allowed):
        assert part in str(e)


def test_cross_key_constraints_blame_the_key_that_was_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, ["--poll-min", "2"])
    assert info.value.key == "poll-min" and info.value.origin == "command line"
    assert "at most poll-max (1, from default)" in str(info.value)
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, main="poll-max = 0.01\n")
    assert info.value.key == "poll-max" and "at least poll-min" in str(info.value)
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, ["--domain-zero-dynamic-max", "1000"])
    assert info.value.key == "domain-zero-dynamic-max"
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, ["--json-socket", "/var/xapi/memory"])
    assert info.value.key == "json-socket"


# --- the command line ---


def test_flag_forms(tmp_path: Path) -> None:
    cfg, prov, _, _ = _load(tmp_path, ["--poll-max", "3", "--poll-min=0.5"])
    assert (cfg.poll_max_s, cfg.poll_min_s) == (3.0, 0.5)
    assert _load(tmp_path, ["--manage-domain-zero"]).config.manage_domain_zero is True
    assert _load(tmp_path, ["--manage-domain-zero", "off"]).config.manage_domain_zero is False
    assert _load(tmp_path, ["--manage-domain-zero=no"]).config.manage_domain_zero is False
    cfg = _load(tmp_path, ["--manage-domain-zero", "--loglevel", "debug"]).config
    assert cfg.manage_domain_zero is True and cfg.loglevel == "debug"
    # A value may look like a negative number; validation then rejects it.
    with pytest.raises(ConfigError, match="invalid value '-1'"):
        _load(tmp_path, ["--poll-max", "-1"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pidfile"], "option --pidfile needs a value"),
        (["--pidfile", "--daemon"], "option --pidfile needs a value"),
        (["--config"], "option --config needs a value"),
        (["--no-such-thing", "1"], "unknown option --no-such-thing"),
        (["--stuck-afterr", "1"], "did you mean 'stuck-after'"),
        (["stray"], "unexpected argument 'stray'"),
        (["--"], "unexpected argument '--'"),
        (["--daemon=maybe"], "daemon"),
        (["--print-config=yes"], "option --print-config takes no value"),
    ],
)
def test_command_line_errors(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load(tmp_path, argv)


def test_options(tmp_path: Path) -> None:
    assert _load(tmp_path, ["--simulate"]).options.simulate == ""
    assert _load(tmp_path, ["--simulate", "two-vms"]).options.simulate == "two-vms"
    assert _load(tmp_path, ["--simulate=x.toml"]).options.simulate == "x.toml"
    loaded = _load(tmp_path, ["--simulate", "--loglevel", "debug", "--daemon", "--print-config"])
    o = loaded.options
    assert (o.simulate, o.daemon, o.print_config, o.version, o.help) == ("", True, True,
                                                                          False, False)
    assert loaded.config.loglevel == "debug"
    assert o.argv == ("--simulate", "--loglevel", "debug", "--daemon", "--print-config")
    assert _load(tmp_path).options.simulate is None
    # Upstream-only options are accepted, with a warning.
    _, _, warnings, _ = _load(tmp_path, ["--disable-logging-for", "http"])
    assert warnings == ["command line: --disable-logging-for is an upstream option with no "
                        "effect here (ignored)"]


@pytest.mark.parametrize("flag", ["--help", "-h", "--version"])
def test_help_and_version_work_with_a_broken_configuration(tmp_path: Path, flag: str) -> None:
    cfg, _, warnings, opts = _load(tmp_path, ["--poll-max=broken", flag], main="poll-min = x\n")
    assert cfg == DEFAULTS and warnings == []
    assert (opts.help, opts.version) == (flag != "--version", flag == "--version")


def test_help_text_lists_every_key() -> None:
    text = c.help_text()
    for name in KEYS:
        assert f"  --{name} " in text
    assert all(len(line) <= 79 for line in text.splitlines())


# --- --print-config ---


def test_format_config_shows_every_key_value_and_origin(tmp_path: Path) -> None:
    cfg, prov, _, _ = _load(tmp_path, ["--stuck-after", "7.5"],
                            main="# x\nsocket-mode = 0640\ndomain-zero-dynamic-max = 4294967296\n")
    text = c.format_config(cfg, prov)
    rows = {}
    for line in text.splitlines()[3:]:
        m = re.fullmatch(r"(\S+) = (.*?) +# (.*)", line)
        assert m, line
        rows[m.group(1)] = (m.group(2), m.group(3))
    assert list(rows) == list(KEYS)
    conf = tmp_path / "squeezed.conf"
    assert rows["stuck-after"] == ("7.5", "command line")
    assert rows["socket-mode"] == ("0640", f"{conf}:2")
    assert rows["domain-zero-dynamic-max"] == ("4294967296", f"{conf}:3")
    assert rows["balance-check-interval"] == ("10", "default")
    assert rows["domain-zero-dynamic-min"] == ("1073741824", "default")
    assert rows["poll-min"] == ("0.02", "default")
    assert rows["socket-group"] == ('""', "default")
    assert rows["manage-domain-zero"] == ("false", "default")


def test_format_config_output_is_a_configuration_file(tmp_path: Path) -> None:
    cfg = dataclasses.replace(DEFAULTS, socket="/run/with space", poll_min_s=0.1 + 0.2,
                              domain_zero_dynamic_max_bytes=5 << 30, manage_domain_zero=True)
    out = tmp_path / "printed.conf"
    out.write_text(c.format_config(cfg, {}))
    again, prov, warnings, _ = load(["--config", str(out)], config_dir=str(tmp_path / "none"))
    assert again == cfg and warnings == []
    assert all(o.kind == "file" for o in prov.values())


# --- reloading ---


def test_reloadable_keys() -> None:
    assert c.RELOADABLE_KEYS <= set(KEYS)
    assert {"balance-check-interval", "loglevel", "host-reserved-kib", "balance-tolerance-kib",
            "stuck-after", "uncooperative-after", "poll-min", "poll-max", "operation-timeout",
            "metrics-textfile", "metrics-textfile-interval"} == c.RELOADABLE_KEYS


def test_classify_and_apply_reloadable() -> None:
    new = dataclasses.replace(DEFAULTS, loglevel="debug", poll_max_s=2.0,
                              socket="/run/other", manage_domain_zero=True)
    assert c.classify_changes(DEFAULTS, new) == (["loglevel", "poll-max"],
                                                 ["manage-domain-zero", "socket"])
    updated, applied, restart = c.apply_reloadable(DEFAULTS, new)
    assert (applied, restart) == (["loglevel", "poll-max"], ["manage-domain-zero", "socket"])
    assert updated == dataclasses.replace(DEFAULTS, loglevel="debug", poll_max_s=2.0)


# --- derived values ---


def test_engine_config_matches_engine() -> None:
    from squeezed.engine.operations import EngineConfig

    cfg = dataclasses.replace(DEFAULTS, host_reserved_kib=1, balance_tolerance_kib=2,
                              stuck_after_s=3.0, uncooperative_after_s=4.0, poll_min_s=0.5,
                              poll_max_s=0.75)
    e = cfg.engine_config()
    assert isinstance(e, EngineConfig)
    assert (e.reserve_kib, e.tolerance_kib, e.stuck_after_s, e.uncooperative_after_s,
            e.min_poll_s, e.max_poll_s) == (1, 2, 3.0, 4.0, 0.5, 0.75)
    # The defaults agree with the engine's own.
    assert DEFAULTS.engine_config() == EngineConfig()


def test_xenstored_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Empty by default: the xenstore client decides, the one place that does.
    assert DEFAULTS.xenstored_socket == ""
    assert default_socket_path({}) == "/var/run/xenstored/socket"
    assert default_socket_path({"XENSTORED_PATH": "/x"}) == "/x"
    monkeypatch.setenv("XENSTORED_PATH", "/x")
    assert XenstoreClient(DEFAULTS.xenstored_socket or None).path == "/x"
    assert XenstoreClient("/y").path == "/y"


# --- the shipped files agree with the code ---


def test_shipped_example_documents_every_key_with_its_default(tmp_path: Path) -> None:
    text = (ROOT / "squeezed.conf").read_text()
    commented = {}
    for line in text.splitlines():
        m = re.fullmatch(r"# ([a-z-]+) = (.*)", line)
        if m and m.group(1) in KEYS:
            commented[m.group(1)] = line[2:]
    assert set(commented) == set(KEYS)
    # As shipped (all commented out) it changes nothing...
    cfg, _, warnings, _ = load(["--config", str(ROOT / "squeezed.conf")],
                               config_dir=str(tmp_path / "none"))
    assert cfg == DEFAULTS and warnings == []
    # ...and every value shown is the default.
    uncommented = tmp_path / "all.conf"
    uncommented.write_text("\n".join(commented.values()) + "\n")
    cfg, prov, warnings, _ = load(["--config", str(uncommented)],
                                  config_dir=str(tmp_path / "none"))
    assert cfg == DEFAULTS and warnings == [] and all(o.kind == "file" for o in prov.values())


@pytest.mark.parametrize("doc", ["docs/squeezed.8", "docs/operations.md", "README.md"])
def test_documentation_mentions_every_key(doc: str) -> None:
    path = ROOT / doc
    text = path.read_text().replace("\\-", "-")
    missing = [name for name in KEYS if not re.search(rf"(?<![\w-]){name}(?![\w-])", text)]
    assert missing == []
