"""The simulated xenstored's operations, one small function each, and the
table `HANDLERS` (message type -> function) that `core.XenstoreCore` dispatches
through.

A handler gets the core, the connection, the request, its transaction (None
outside one) and the tree the request sees (the transaction's snapshot, or the
committed tree).  It returns the reply's payload, or raises `XsError` for an
XS_ERROR reply.  Inside a transaction a change is made to its snapshot and
recorded for the commit to replay; outside, it goes through the core, which
fires watches and write hooks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from squeezed.sim.xenhost.xenstored.tree import Tree, XsError, canonical, domain_path
from squeezed.sim.xenhost.xenstored.watches import Watch
from squeezed.xen.xs_wire import (
    OK,
    PAYLOAD_MAX,
    Op,
    Packet,
    join_strings,
    split_strings,
    split_write,
)

if TYPE_CHECKING:
    from squeezed.sim.xenhost.xenstored.core import Conn, Txn, XenstoreCore

Handler = Callable[["XenstoreCore", "Conn", Packet, "Txn | None", Tree], "bytes | None"]

_PERM_RE = re.compile(r"[nrwb][0-9]+\Z")


# --- arguments -----------------------------------------------------------------------------


def _args(pkt: Packet, n: int) -> list[str]:
    args = split_strings(pkt.payload)
    if len(args) < n:
        raise XsError("EINVAL")
    return args


def _path(conn: Conn, pkt: Packet) -> str:
    return canonical(_args(pkt, 1)[0], conn.domid)


def _domid(pkt: Packet) -> int:
    s = _args(pkt, 1)[0]
    if not s.isdigit():
        raise XsError("EINVAL")
    return int(s)


def directory_part(gen: int, children: list[str], offset: int) -> bytes:
    """Reply: generation, then as many whole names from byte ``offset`` as fit.
    The listing ends with an empty name, which libxenstore uses to stop."""
    head = str(gen).encode() + b"\0"
    listing = join_strings(children) + b"\0"
    if offset < 0 or offset > len(listing):
        raise XsError("EINVAL")
    room = PAYLOAD_MAX - len(head)
    chunk = listing[offset : offset + room]
    if offset + room < len(listing):
        # Cut after the last complete name so no name straddles two replies.
        chunk = chunk[: chunk.rfind(b"\0") + 1]
    return head + chunk


# --- reads ---------------------------------------------------------------------------------


def read(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None, tree: Tree) -> bytes:
    return tree.read(_path(conn, pkt))


def directory(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None, tree: Tree) -> bytes:
    body = join_strings(tree.directory(_path(conn, pkt)))
    if len(body) > PAYLOAD_MAX:
        raise XsError("E2BIG")
    return body


def directory_part_op(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None,
                      tree: Tree) -> bytes:
    path_s, offset_s = _args(pkt, 2)[:2]
    path = canonical(path_s, conn.domid)
    children = tree.directory(path)
    listed = tree.lookup(path)
    assert listed is not None
    return directory_part(listed.gen, children, int(offset_s))


def get_perms(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None, tree: Tree) -> bytes:
    return join_strings(tree.get_perms(_path(conn, pkt)))


# --- changes -------------------------------------------------------------------------------


def write(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None, tree: Tree) -> bytes:
    path_s, value = split_write(pkt.payload)
    path = canonical(path_s, conn.domid)
    if txn is None:
        core.write(path, value)
    else:
        tree.write(path, value)
        txn.ops.append(lambda c: c.write(path, value))
    return OK


def mkdir(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None, tree: Tree) -> bytes:
    path = _path(conn, pkt)
    if txn is None:
        core.mkdir(path)
    else:
        tree.mkdir(path)
        txn.ops.append(lambda c: c.mkdir(path))
    return OK


def rm(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None, tree: Tree) -> bytes:
    path = _path(conn, pkt)
    if txn is None:
        core.rm(path)
    else:
        tree.rm(path)
        txn.ops.append(lambda c: c.rm(path))
    return OK


def set_perms(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None, tree: Tree) -> bytes:
    args = _args(pkt, 2)
    path = canonical(args[0], conn.domid)
    perms = tuple(args[1:])
    if not all(_PERM_RE.match(p) for p in perms):
        raise XsError("EINVAL")
    if txn is None:
        core.set_perms(path, perms)
    else:
        tree.set_perms(path, perms)
        txn.ops.append(lambda c: c.set_perms(path, perms))
    return OK


# --- watches -------------------------------------------------------------------------------


def watch(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None, tree: Tree) -> bytes:
    path_s, token = _args(pkt, 2)[:2]
    watched = canonical(path_s, conn.domid, allow_special=True)
    if (watched, token) in conn.watches:
        raise XsError("EEXIST")
    w = Watch(conn.id, watched, token, relative=not path_s.startswith(("/", "@")))
    core.add_watch(conn, w)
    # Fired once up front (as the real daemons do): simplifies clients and restarts.
    core.emit(w, watched)
    return OK


def unwatch(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None, tree: Tree) -> bytes:
    path_s, token = _args(pkt, 2)[:2]
    watched = canonical(path_s, conn.domid, allow_special=True)
    found = conn.watches.get((watched, token))
    if found is None:
        raise XsError("ENOENT")
    core.drop_watch(conn, found)
    return OK


def reset_watches(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None,
                  tree: Tree) -> bytes:
    core.drop_watches(conn)
    conn.txns.clear()
    return OK


# --- transactions --------------------------------------------------------------------------


def transaction_start(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None,
                      tree: Tree) -> bytes:
    if pkt.tx_id:
        raise XsError("EBUSY")
    return str(core.start_transaction(conn).id).encode() + b"\0"


def transaction_end(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None,
                    tree: Tree) -> bytes:
    if txn is None:
        raise XsError("EINVAL")
    arg = _args(pkt, 1)[0]
    if arg not in ("T", "F"):
        raise XsError("EINVAL")
    del conn.txns[txn.id]
    if arg == "T":
        core.commit(txn)
    return OK


# --- domains and control -------------------------------------------------------------------


def get_domain_path(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None,
                    tree: Tree) -> bytes:
    return domain_path(_domid(pkt)).encode() + b"\0"


def introduce(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None, tree: Tree) -> bytes:
    _args(pkt, 3)
    core.introduce(_domid(pkt))
    return OK


def release(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None, tree: Tree) -> bytes:
    core.release(_domid(pkt))
    return OK


def is_domain_introduced(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None,
                         tree: Tree) -> bytes:
    return b"T\0" if _domid(pkt) in core.introduced else b"F\0"


def domid_only(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None,
               tree: Tree) -> bytes:
    """RESUME and SET_TARGET: the domid is checked, nothing else is simulated."""
    _domid(pkt)
    return OK


def control(core: XenstoreCore, conn: Conn, pkt: Packet, txn: Txn | None, tree: Tree) -> bytes:
    if _args(pkt, 1)[0] in ("print", "log"):
        return OK
    raise XsError("EINVAL")


HANDLERS: dict[int, Handler] = {
    Op.READ: read,
    Op.DIRECTORY: directory,
    Op.DIRECTORY_PART: directory_part_op,
    Op.GET_PERMS: get_perms,
    Op.WRITE: write,
    Op.MKDIR: mkdir,
    Op.RM: rm,
    Op.SET_PERMS: set_perms,
    Op.WATCH: watch,
    Op.UNWATCH: unwatch,
    Op.RESET_WATCHES: reset_watches,
    Op.TRANSACTION_START: transaction_start,
    Op.TRANSACTION_END: transaction_end,
    Op.GET_DOMAIN_PATH: get_domain_path,
    Op.INTRODUCE: introduce,
    Op.RELEASE: release,
    Op.IS_DOMAIN_INTRODUCED: is_domain_introduced,
    Op.RESUME: domid_only,
    Op.SET_TARGET: domid_only,
    Op.CONTROL: control,
}
