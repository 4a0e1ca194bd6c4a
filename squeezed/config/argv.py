"""The command line: every key as ``--key value`` / ``--key=value`` (booleans may be
bare), the options that are not keys (`Options`), upstream's single-dash spellings
(OCaml Arg: ``-config FILE``, ``-key value``, ``-key=value``), and ``--help``."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from squeezed.config.file import DEFAULT_CONFIG_DIR, DEFAULT_CONFIG_FILE
from squeezed.config.keys import DEFAULTS, IGNORED_UPSTREAM_KEYS, KEYS, suggest
from squeezed.config.origin import COMMAND_LINE, ConfigError
from squeezed.config.values import FALSE, TRUE, quote


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


class CommandLine(NamedTuple):
    settings: list[tuple[str, str]]  # (key, value) in command-line order
    options: Options
    warnings: list[str]
    explicit_file: bool  # --config given
    explicit_dir: bool  # --config-dir given


_FLAGS = ("daemon", "print-config", "version", "help")
_OPTION_NAMES = frozenset(_FLAGS) | {"simulate", "config", "config-dir"}
_BOOLEAN_WORDS = TRUE | FALSE


def long_form(word: str) -> str:
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
    return long_form(word).startswith("--")


def parse_argv(
    argv: Sequence[str], *, config_file: str = DEFAULT_CONFIG_FILE,
    config_dir: str = DEFAULT_CONFIG_DIR,
) -> CommandLine:
    """The settings and options of `argv` (without the program name); `config_file` and
    `config_dir` are the defaults that ``--config``/``--config-dir`` override."""
    settings: list[tuple[str, str]] = []
    warnings: list[str] = []
    flags: set[str] = set()  # of _FLAGS but daemon
    daemon = False
    simulate: str | None = None
    given_file: str | None = None
    given_dir: str | None = None
    i = 0
    while i < len(argv):
        arg = long_form(argv[i])
        i += 1
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"command line: unexpected argument {arg!r}; see --help")
        name, eq, inline = arg[2:].partition("=")
        value: str | None = inline if eq else None
        nxt = argv[i] if i < len(argv) else None
        key = KEYS.get(name)
        if name == "daemon" and value is None and nxt is not None \
                and nxt.lower() in _BOOLEAN_WORDS:
            value, i = nxt, i + 1  # "-daemon true", as an upstream-style boolean
        if name == "daemon" and value is not None:
            if value.lower() not in _BOOLEAN_WORDS:
                raise ConfigError.invalid(name, value, COMMAND_LINE, "true or false")
            daemon = value.lower() in TRUE
            continue
        if name in _FLAGS:
            if value is not None:
                raise ConfigError(
                    f"command line: option --{name} takes no value",
                    key=name,
                    value=value,
                    origin=COMMAND_LINE,
                )
            if name == "daemon":
                daemon = True
            else:
                flags.add(name)
            continue
        if name == "simulate":
            # The scenario is optional: only a following non-flag word is one.
            if value is None and nxt is not None and not _is_option(nxt) \
                    and not nxt.startswith("-"):
                value, i = nxt, i + 1
            simulate = value or ""
            continue
        if key is not None and key.boolean and value is None:
            # Bare flag means true; a following boolean word is its value.
            if nxt is not None and nxt.lower() in _BOOLEAN_WORDS:
                value, i = nxt, i + 1
            else:
                value = "true"
        if (
            name not in KEYS
            and name not in IGNORED_UPSTREAM_KEYS
            and name not in ("config", "config-dir")
        ):
            raise ConfigError(
                f"command line: unknown option --{name}{suggest(name)}",
                key=name,
                origin=COMMAND_LINE,
            )
        if value is None:
            if nxt is None or _is_option(nxt):
                raise ConfigError(
                    f"command line: option --{name} needs a value", key=name, origin=COMMAND_LINE
                )
            value, i = nxt, i + 1
        if name == "config":
            given_file = value
        elif name == "config-dir":
            given_dir = value
        elif key is not None:
            settings.append((name, value))
        else:
            warnings.append(
                f"command line: --{name} is an upstream option with no effect here (ignored)"
            )
    options = Options(
        config_file=config_file if given_file is None else given_file,
        config_dir=config_dir if given_dir is None else given_dir,
        simulate=simulate,
        daemon=daemon,
        print_config="print-config" in flags,
        version="version" in flags,
        help="help" in flags,
        argv=tuple(argv),
    )
    return CommandLine(settings, options, warnings, given_file is not None,
                       given_dir is not None)


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
        default = quote(k.fmt(DEFAULTS.get(name)))
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
