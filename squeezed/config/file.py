"""The configuration files: ``/etc/squeezed.conf`` and ``conf.d/*.conf`` read, and the
effective configuration written back in the same format (``--print-config``).

The format is upstream xcp_service's; see the package's docstring.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from squeezed.config.keys import IGNORED_UPSTREAM_KEYS, KEYS, Config, suggest
from squeezed.config.origin import DEFAULT, ConfigError, Origin
from squeezed.config.values import quote

DEFAULT_CONFIG_FILE = "/etc/squeezed.conf"
DEFAULT_CONFIG_DIR = "/etc/squeezed.conf.d"

# Key name -> (its text, where it was set); the last setting of a key wins.
RawSettings = dict[str, tuple[str, Origin]]

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


def read_file(path: str, out: RawSettings, warnings: list[str]) -> None:
    """Add the settings of the file at `path` to `out`; lines that are not settings of a
    known key become warnings. An unreadable file is a `ConfigError`."""
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
            warnings.append(f"{where}: unknown key {key!r} (ignored){suggest(key)}")


def conf_d_files(directory: str, explicit: bool) -> list[str]:
    """The ``*.conf`` files of `directory` in the order they are read. A missing
    directory is an error only if it was named (`explicit`)."""
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


def format_config(config: Config, provenance: Mapping[str, Origin]) -> str:
    """Every key = value with where it came from; itself a valid configuration file."""
    rows = [
        (f"{name} = {quote(k.fmt(config.get(name)))}", str(provenance.get(name, DEFAULT)))
        for name, k in KEYS.items()
    ]
    width = max(len(r[0]) for r in rows)
    out = ["# squeezed effective configuration: key = value  # where it came from",
           "# precedence: command line > " + DEFAULT_CONFIG_DIR + "/*.conf > file > default;",
           "# upstream differs: its files override its command line (docs/operations.md)"]
    out += [f"{setting:<{width}}  # {origin}" for setting, origin in rows]
    return "\n".join(out) + "\n"

