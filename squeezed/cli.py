"""squeezectl: call the Memory interface of a running squeezed.

One subcommand per IDL method (idl/memory.json); `dbg` comes from --dbg and
`session_id` from --session. The default session is the daemon's built-in
`default` session: squeezectl deliberately does not `login`, because a login
deletes the untransferred reservations of earlier logins under the same name,
so `squeezectl reserve` followed by `squeezectl transfer` would lose the
reservation in between. Use `squeezectl login NAME` and `--session NAME` to act
as another client.

Exit status: 0 success, 1 the service returned an error (or an unreadable
reply), 2 usage error, 3 cannot connect to the socket, 4 the request was sent
but no reply came within --timeout (it may still complete).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from typing import Any, TextIO

from squeezed import idl
from squeezed.errors import MemoryInterfaceError
from squeezed.rpc.client import ConnectionFailed, MemoryClient, NoReply, ProtocolError
from squeezed.rpc.dispatch import INT64_MAX, INT64_MIN, INT_MAX, INT_MIN, TypeMismatch, unmarshal
from squeezed.switch.client import SwitchMemoryClient
from squeezed.switch.protocol import DEFAULT_SWITCH_PATH

EXIT_OK, EXIT_SERVICE, EXIT_USAGE, EXIT_CONNECT, EXIT_NO_REPLY = 0, 1, 2, 3, 4
IMPLICIT = ("dbg", "session_id")  # filled from global options


def _int_type(lo: int, hi: int, tname: str) -> Any:
    def conv(s: str) -> int:
        try:
            v = int(s, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"out of {tname} range: {s}")
        return v

    conv.__name__ = tname
    return conv


_CONVERTERS: dict[str, Any] = {
    "string": str,
    "int64": _int_type(INT64_MIN, INT64_MAX, "int64"),
    "int": _int_type(INT_MIN, INT_MAX, "int"),
    "float": float,
}


def _first_sentence(doc: str) -> str:
    s = doc.split(". ")[0].rstrip(".")
    return s[:1].lower() + s[1:]


def build_parser(iface: idl.Interface) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="squeezectl",
        description=__doc__.split("\n\n")[0]
        + f"\n\nInterface {iface.name} {'.'.join(map(str, iface.version))}.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--socket",
        help="daemon socket (default: $SQUEEZED_SOCKET, else "
        f"{iface.sockets['xmlrpc']}, or {iface.sockets['jsonrpc']} with --protocol json)",
    )
    ap.add_argument("--protocol", choices=("xmlrpc", "json"), default="xmlrpc", help="wire dialect")
    ap.add_argument(
        "--switch", nargs="?", const=DEFAULT_SWITCH_PATH, metavar="PATH",
        help="call through message-switch's queue org.xen.xapi.memory as xenopsd and xapi do "
        f"(JSON-RPC; PATH defaults to {DEFAULT_SWITCH_PATH}) instead of a socket",
    )
    ap.add_argument(
        "--session",
        default=iface.default_session,
        help=f"session_id for calls that take one (default: {iface.default_session})",
    )
    ap.add_argument("--dbg", default="squeezectl", help="debug string sent with each call")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    ap.add_argument(
        "--timeout", type=_positive_seconds, default=300.0,
        help="seconds to wait for a reply (default 300)",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for m in iface.methods:
        tag = {"memory": " [Memory.* dialect]", "extension": " [extension]"}.get(m.dialect, "")
        errors = ", ".join(m.errors)
        sp = sub.add_parser(
            m.cli,
            help=_first_sentence(m.doc) + tag,
            description=f"{textwrap.fill(m.doc, 78)}\n\nwire: {m.name}({', '.join(m.param_names)})"
            f" -> {idl.type_str(m.result)}\nerrors: {errors}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for p in m.params:
            if p.name in IMPLICIT:
                continue
            doc = p.doc or (iface.types[p.alias].get("doc", "") if p.alias else "")
            sp.add_argument(
                f"arg_{p.name}",
                metavar=p.name.upper(),
                type=_CONVERTERS[p.type],
                help=f"{doc} ({p.type})",
            )
        sp.set_defaults(method=m.name)
    _add_views(sub)
    return ap


def _add_views(sub: Any) -> None:
    """Operator views built on get_state (squeezed/ctl/), after the IDL's methods."""
    from squeezed.ctl import metrics, record, top

    for name, module, help_ in (
        ("top", top, "live view of host memory, domains and operations [view]"),
        ("metrics", metrics, "print the state in the Prometheus text format [view]"),
        ("record", record, "sample the state into FILE for squeezed-sim plot [view]"),
    ):
        sp = sub.add_parser(name, help=help_, description=(module.__doc__ or "").split("\n\n")[0])
        module.add_arguments(sp)
        sp.set_defaults(view=module.run)


def _params(m: idl.Method, args: argparse.Namespace) -> list[Any]:
    values = {
        p.name: (
            args.dbg
            if p.name == "dbg"
            else args.session
            if p.name == "session_id"
            else getattr(args, f"arg_{p.name}")
        )
        for p in m.params
    }
    if m.dialect == "memory":
        return [values]  # this dialect's documented form: one struct of named members
    return [values[n] for n in m.param_names]


def _scalar(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return ", ".join(_scalar(x) for x in v) if v else "-"
    return str(v)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """A plain text table, numbers right-aligned."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    cells = [[_scalar(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    numeric = [  # right-align a column whose present values are all numbers
        all(
            isinstance(r[c], int) and not isinstance(r[c], bool)
            for r in rows
            if r.get(c) is not None
        )
        for c in cols
    ]

    def line(vals: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(vals, widths, numeric, strict=True)
        ).rstrip()

    return [line(cols)] + [line(row) for row in cells]


def render(value: Any) -> list[str]:
    """Human-readable lines for a result."""
    if value is None:
        return []
    if isinstance(value, dict):
        out: list[str] = []
        width = max((len(k) for k in value), default=0)
        for k, v in value.items():
            if isinstance(v, dict):
                out.append(f"{k}:")
                out += ["  " + x for x in render(v)]
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                out.append(f"{k}:")
                out += ["  " + x for x in table(v)]
            elif isinstance(v, list) and not v and k in ("reservations", "domains"):
                out.append(f"{k}: (none)")
            else:
                out.append(f"{k + ':':<{width + 1}} {_scalar(v)}")
        return out
    if isinstance(value, list):
        flat: list[str] = []
        for x in value:
            flat += [_scalar(y) for y in x] if isinstance(x, list) else [_scalar(x)]
        return [" ".join(flat)]
    return str(value).splitlines() or [""]


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


EXIT_BROKEN_PIPE = 128 + 13  # as a shell reports a command killed by SIGPIPE


def main(
    argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """squeezectl; a reader that stops early (`squeezectl diagnostics | head`)
    ends it quietly, as it would any Unix tool."""
    try:
        return _main(argv, stdout=stdout, stderr=stderr)
    except BrokenPipeError:
        if stdout is None:  # the process's own stdout: nothing more may reach it
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EXIT_BROKEN_PIPE


def _main(
    argv: list[str] | None, *, stdout: TextIO | None, stderr: TextIO | None
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    iface = idl.load()
    ap = build_parser(iface)
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if not args.command:
        ap.print_usage(err)
        print("squeezectl: error: a command is required (see --help)", file=err)
        return EXIT_USAGE
    key = "xmlrpc" if args.protocol == "xmlrpc" else "jsonrpc"
    path = args.socket or os.environ.get("SQUEEZED_SOCKET") or iface.sockets[key]
    client: MemoryClient | SwitchMemoryClient
    if args.switch:
        path = args.switch
        client = SwitchMemoryClient(path, timeout=args.timeout)
    else:
        client = MemoryClient(path, args.protocol, timeout=args.timeout, user_agent="squeezectl")
    if getattr(args, "view", None) is not None:  # top, metrics, record: any transport
        with client:
            return int(args.view(args, client, path, out, err))
    m = iface.method(args.method)
    try:
        with client:
            wire = client.call(m.name, *_params(m, args))
        value = unmarshal(iface, m.result, wire)
    except NoReply:
        print(f"squeezectl: {m.name}: no reply from {path} within {args.timeout:g} s; the call "
              "may still complete (check `squeezectl state`)", file=err)
        return EXIT_NO_REPLY
    except ConnectionFailed as e:
        what = "message-switch" if args.switch else "squeezed"
        print(f"squeezectl: cannot connect to {path}: {e.reason}. Is {what} running?", file=err)
        return EXIT_CONNECT
    except MemoryInterfaceError as e:
        wire_err = e.wire()
        if args.json:
            print(json.dumps({"error": wire_err}), file=out)
        detail = "" if not isinstance(wire_err, list) else " " + json.dumps(wire_err[1])
        print(f"squeezectl: {m.name} failed: {e.name}{detail} ({e})", file=err)
        return EXIT_SERVICE
    except (ProtocolError, TypeMismatch) as e:
        print(f"squeezectl: unreadable reply from {path}: {e}", file=err)
        return EXIT_SERVICE
    if args.json:
        print(json.dumps(value, indent=2), file=out)
    else:
        for line in render(value):
            print(line, file=out)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
