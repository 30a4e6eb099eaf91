"""Where each inode the kernel knows sits in the fs3 tree.

The kernel addresses FUSE requests by inode number; fs3's meta service is addressed by
path. The mount keeps, for every inode the kernel has looked up, its parent and name (not
its path, so that renaming a directory moves everything below it at once) and the kernel's
lookup count, and forgets an inode when the kernel does. Inode numbers are fs3's own inode
ids; fs3's root is id 1, which is also FUSE's root inode.

Only the trio thread touches the table, so it needs no lock.
"""

from __future__ import annotations

import dataclasses
import errno
import time
from dataclasses import dataclass

from fs3.meta.store import ROOT_ID
from fs3.types import DIRECTORY, Inode


class StaleInode(OSError):
    """The kernel asked about an inode the mount no longer knows the place of."""

    def __init__(self, ino: int) -> None:
        super().__init__(errno.ESTALE, f"inode {ino} is no longer in the tree")


@dataclass
class Node:
    inode: Inode
    """The attributes last fetched from meta (or set by this mount)."""
    parent: int
    name: str
    lookups: int = 0
    detached: bool = False
    """Unlinked (or replaced) while the kernel still knew it: it has no path any more."""
    fresh_until: float = 0.0
    """Monotonic time until which ``inode`` may answer a getattr without asking meta."""


class InodeTable:
    """Args:
    root: fs3's root inode.
    ttl: seconds fetched attributes stay fresh (the kernel's attribute timeout: the kernel
        drops its copy early after changes it made, e.g. to a directory it created in,
        and asking meta again each time cost 2 of 5 meta calls of create+stat+unlink).
    """

    def __init__(self, root: Inode, ttl: float) -> None:
        self._ttl = ttl
        self._nodes: dict[int, Node] = {ROOT_ID: Node(root, ROOT_ID, "", lookups=1)}
        self._names: dict[tuple[int, str], int] = {}

    def __contains__(self, ino: int) -> bool:
        return ino in self._nodes

    def node(self, ino: int) -> Node:
        found = self._nodes.get(ino)
        if found is None:
            raise StaleInode(ino)
        return found

    def path(self, ino: int) -> str:
        """The fs3 path of ``ino``. Raises StaleInode when it has none."""
        parts: list[str] = []
        while ino != ROOT_ID:
            node = self.node(ino)
            if node.detached:
                raise StaleInode(ino)
            parts.append(node.name)
            ino = node.parent
        return "/" + "/".join(reversed(parts))

    def child_path(self, parent: int, name: str) -> str:
        base = self.path(parent)
        return f"{base.rstrip('/')}/{name}"

    def child(self, parent: int, name: str) -> int | None:
        """The inode the kernel last saw at ``name`` in ``parent``, if any."""
        return self._names.get((parent, name))

    def remember(self, parent: int, name: str, inode: Inode, lookups: int = 1) -> Node:
        """Records ``inode`` at ``name`` in ``parent`` and adds to its lookup count."""
        old = self._names.get((parent, name))
        if old is not None and old != inode.id:
            self.detach(old)  # replaced behind our back (another client)
        node = self._nodes.get(inode.id)
        if node is None:
            node = self._nodes[inode.id] = Node(inode, parent, name)
        else:
            if not node.detached and (node.parent, node.name) != (parent, name):
                if inode.nlink < 2:  # a hard-linked file's other name is still its own
                    self._names.pop((node.parent, node.name), None)
            node.inode, node.parent, node.name, node.detached = inode, parent, name, False
        self._names[(parent, name)] = inode.id
        node.lookups += lookups
        node.fresh_until = time.monotonic() + self._ttl
        return node

    def update(self, inode: Inode) -> None:
        """Keeps fresher attributes of a known inode."""
        node = self._nodes.get(inode.id)
        if node is not None:
            node.inode = inode
            node.fresh_until = time.monotonic() + self._ttl

    def fresh_for(self, ino: int) -> float:
        """Seconds the attributes of ``ino`` stay fresh (0 when they must be fetched)."""
        node = self._nodes.get(ino)
        return max(0.0, node.fresh_until - time.monotonic()) if node is not None else 0.0

    def touched(self, ino: int, subdirs: int = 0) -> None:
        """This mount changed directory ``ino``'s entries: meta set its times to now and
        added ``subdirs`` to its link count."""
        node = self._nodes.get(ino)
        if node is not None:
            now = time.time()
            nlink = node.inode.nlink + subdirs
            node.inode = dataclasses.replace(node.inode, mtime=now, ctime=now, nlink=nlink)

    def moved(self, ino: int, parent: int, name: str) -> None:
        """``ino`` was renamed to ``name`` in ``parent``; whatever was there is detached."""
        old = self._names.get((parent, name))
        if old is not None and old != ino:
            self.detach(old)
        node = self._nodes.get(ino)
        if node is None:
            return
        if not node.detached:
            self._names.pop((node.parent, node.name), None)
        node.parent, node.name, node.detached = parent, name, False
        node.inode = dataclasses.replace(node.inode, ctime=time.time())  # as meta's rename
        self._names[(parent, name)] = ino

    def unlinked(self, parent: int, name: str) -> None:
        """Name ``name`` in ``parent`` was removed: its file has one link fewer, and no path
        when the table knew it by that name (the kernel looks up another name of a
        hard-linked file again when it gets ESTALE)."""
        ino = self._names.pop((parent, name), None)
        node = self._nodes.get(ino) if ino is not None else None
        if node is None:
            return
        nlink = max(node.inode.nlink - 1, 0)
        node.inode = dataclasses.replace(node.inode, nlink=nlink, ctime=time.time())
        if (node.parent, node.name) == (parent, name):
            node.detached = True

    def detach(self, ino: int) -> None:
        """``ino`` lost its name (unlinked, or replaced by a rename)."""
        node = self._nodes.get(ino)
        if node is None or node.detached:
            return
        if self._names.get((node.parent, node.name)) == ino:
            del self._names[(node.parent, node.name)]
        node.detached = True

    def forget(self, ino: int, count: int) -> None:
        """The kernel dropped ``count`` lookups of ``ino``; at zero the inode is dropped."""
        node = self._nodes.get(ino)
        if node is None or ino == ROOT_ID:
            return
        node.lookups -= count
        if node.lookups <= 0:
            self.detach(ino)
            del self._nodes[ino]

    def is_dir(self, ino: int) -> bool:
        node = self._nodes.get(ino)
        return node is not None and node.inode.kind == DIRECTORY
