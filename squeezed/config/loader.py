"""The effective configuration: defaults < file < conf.d/*.conf < command line,
each value validated, then the constraints between keys checked."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

from squeezed.config.argv import Options, long_form, parse_argv
from squeezed.config.file import (
    DEFAULT_CONFIG_DIR,
    DEFAULT_CONFIG_FILE,
    RawSettings,
    conf_d_files,
    read_file,
)
from squeezed.config.keys import DEFAULTS, KEYS, Config, Value, with_values
from squeezed.config.origin import COMMAND_LINE, DEFAULT, ConfigError, Provenance


class Loaded(NamedTuple):
    config: Config
    provenance: Provenance
    warnings: list[str]
    options: Options


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
    long_forms = [long_form(a) for a in argv]
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
    cli, options, warnings, explicit_file, explicit_dir = parse_argv(
        argv, config_file=config_file, config_dir=config_dir)
    config_file, config_dir = options.config_file, options.config_dir

    raw: RawSettings = {}
    if os.path.exists(config_file) or explicit_file:
        read_file(config_file, raw, warnings)
    for path in conf_d_files(config_dir, explicit_dir):
        read_file(path, raw, warnings)
    for name, value in cli:
        raw[name] = (value, COMMAND_LINE)

    values: dict[str, Value] = {}
    provenance: Provenance = {name: DEFAULT for name in KEYS}
    for name, (text, origin) in raw.items():
        key = KEYS[name]
        try:
            values[name] = key.parse(text.strip())
        except ValueError:
            raise ConfigError.invalid(name, text, origin, key.allowed) from None
        provenance[name] = origin
    config = with_values(DEFAULTS, values)
    _check_consistency(config, provenance)

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

