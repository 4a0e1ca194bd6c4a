"""The simulated xenstored's tree: path rules, nodes, and copy-on-write
snapshots (what a transaction runs on).

Nothing here knows about connections, watches or the wire: `Tree` reads and
changes nodes, and reports every node it reads or changes to a ``touch``
callback, which is how a transaction records what it depends on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from squeezed.xen.xs_wire import ABS_PATH_MAX

INTRODUCE_DOMAIN = "@introduceDomain"
RELEASE_DOMAIN = "@releaseDomain"
SPECIAL_PATHS = frozenset({INTRODUCE_DOMAIN, RELEASE_DOMAIN})
DEFAULT_PERMS: tuple[str, ...] = ("n0",)  # owner dom0, nobody else may read or write
_VALID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-/_@")


class XsError(Exception):
    """An errno-named failure that becomes an XS_ERROR reply."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


# --- paths ---------------------------------------------------------------------------------


def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def canonical(path: str, domid: int = 0, *, allow_special: bool = False) -> str:
    """``path`` made absolute (a relative one is under the domain's home) and
    checked as the daemons check it; EINVAL if it is not a valid path."""
    if allow_special and path in SPECIAL_PATHS:
        return path
    if not path:
        raise XsError("EINVAL")
    if not path.startswith("/"):
        path = f"{domain_path(domid)}/{path}"
    if (
        len(path) > ABS_PATH_MAX
        or "//" in path
        or (path.endswith("/") and path != "/")
        or not _VALID_CHARS.issuperset(path)
    ):
        raise XsError("EINVAL")
    return path


def components(path: str) -> list[str]:
    return [] if path == "/" else path[1:].split("/")


def parent(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


# --- nodes and trees -----------------------------------------------------------------------


@dataclass(slots=True)
class Node:
    value: bytes
    perms: tuple[str, ...]
    gen: int  # changes whenever value, perms or the set of children change
    children: dict[str, Node] = field(default_factory=dict)
    owner: object = None  # the one Tree that may change this node in place

    def copy(self, owner: object) -> Node:
        """A shallow copy (children shared) for `owner` to change."""
        return Node(self.value, self.perms, self.gen, dict(self.children), owner)


Touch = Callable[[str, "Node | None"], None]


class Tree:
    """A xenstore tree.  ``touch(path, node)`` is called before any node is read or changed,
    which is how a transaction records what it depends on.

    Trees share nodes: `snapshot()` is O(1), and a tree changes only nodes it
    owns, copying a shared one (and its ancestors) before its first change.
    A transaction therefore starts in constant time and sees a true snapshot,
    while the committed tree pays one path copy per node changed after it."""

    def __init__(self, root: Node, gens: Iterator[int], touch: Touch | None = None) -> None:
        self._owner = object()
        self.root = root
        self._gens = gens
        self._touch = touch

    def snapshot(self, touch: Touch | None = None) -> Tree:
        """A new tree with this one's content; neither sees the other's changes."""
        self._owner = object()  # every node is shared from now on
        return Tree(self.root, self._gens, touch)

    def _own(self, parent: Node, name: str, child: Node) -> Node:
        if child.owner is not self._owner:
            child = child.copy(self._owner)
            parent.children[name] = child
        return child

    def _own_root(self) -> Node:
        if self.root.owner is not self._owner:
            self.root = self.root.copy(self._owner)
        return self.root

    def _edit(self, path: str) -> Node:
        """The node at ``path`` (which exists), made this tree's own to change."""
        node = self._own_root()
        for c in components(path):
            node = self._own(node, c, node.children[c])
        return node

    def _t(self, path: str, node: Node | None) -> None:
        if self._touch is not None:
            self._touch(path, node)

    def lookup(self, path: str) -> Node | None:
        node: Node | None = self.root
        for c in components(path):
            assert node is not None
            node = node.children.get(c)
            if node is None:
                return None
        return node

    def _get(self, path: str) -> Node:
        node = self.lookup(path)
        self._t(path, node)
        if node is None:
            raise XsError("ENOENT")
        return node

    def read(self, path: str) -> bytes:
        return self._get(path).value

    def directory(self, path: str) -> list[str]:
        return list(self._get(path).children)

    def get_perms(self, path: str) -> tuple[str, ...]:
        return self._get(path).perms

    def set_perms(self, path: str, perms: tuple[str, ...]) -> None:
        self._get(path)
        node = self._edit(path)
        node.perms = perms
        node.gen = next(self._gens)

    def _create(self, path: str) -> tuple[Node, bool]:
        """Find or create ``path`` and its missing ancestors (which get empty values)."""
        node = self._own_root()
        acc = ""
        created = False
        for c in components(path):
            acc += "/" + c
            child = node.children.get(c)
            if child is None:
                # The parent's child set changes; record both before mutating.
                self._t(parent(acc), node)
                self._t(acc, None)
                child = Node(b"", node.perms, next(self._gens), {}, self._owner)
                node.children[c] = child
                node.gen = next(self._gens)
                created = True
            else:
                child = self._own(node, c, child)
            node = child
        return node, created

    def write(self, path: str, value: bytes) -> None:
        self._t(path, self.lookup(path))
        node, _ = self._create(path)
        node.value = value
        node.gen = next(self._gens)

    def mkdir(self, path: str) -> bool:
        """True if anything was created (an existing node is left alone)."""
        existing = self.lookup(path)
        self._t(path, existing)
        if existing is not None:
            return False
        self._create(path)
        return True

    def rm(self, path: str) -> bool:
        """Remove a subtree.  False if it was absent but its parent exists (C xenstored
        answers OK then); ENOENT if the parent is absent too."""
        if path == "/":
            raise XsError("EINVAL")
        parent_path = parent(path)
        up = self.lookup(parent_path)
        self._t(parent_path, up)
        if up is None:
            raise XsError("ENOENT")
        name = path.rsplit("/", 1)[1]
        self._t(path, up.children.get(name))
        if name not in up.children:
            return False
        up = self._edit(parent_path)
        del up.children[name]
        up.gen = next(self._gens)
        return True
