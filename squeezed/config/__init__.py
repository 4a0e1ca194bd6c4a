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

The package's parts: `keys` (the one table of keys and the `Config` they fill), `values`
(the value syntax), `origin` (where a value came from; `ConfigError`), `file` (the files),
`argv` (the command line), `loader` (putting them together), `reload` (SIGHUP).
"""

from squeezed.config.argv import CommandLine, Options, help_text, parse_argv
from squeezed.config.file import DEFAULT_CONFIG_DIR, DEFAULT_CONFIG_FILE, format_config, parse_line
from squeezed.config.keys import DEFAULTS, IGNORED_UPSTREAM_KEYS, KEYS, RELOADABLE_KEYS, Config, Key
from squeezed.config.loader import Loaded, load
from squeezed.config.origin import COMMAND_LINE, DEFAULT, ConfigError, Origin, Provenance
from squeezed.config.reload import apply_reloadable, classify_changes

__all__ = [
    "COMMAND_LINE",
    "DEFAULT",
    "DEFAULTS",
    "DEFAULT_CONFIG_DIR",
    "DEFAULT_CONFIG_FILE",
    "IGNORED_UPSTREAM_KEYS",
    "KEYS",
    "RELOADABLE_KEYS",
    "CommandLine",
    "Config",
    "ConfigError",
    "Key",
    "Loaded",
    "Options",
    "Origin",
    "Provenance",
    "apply_reloadable",
    "classify_changes",
    "format_config",
    "help_text",
    "load",
    "parse_argv",
    "parse_line",
]
