"""The double binary tree that connects nodes.

Two binary trees over the same nodes, each carrying half of every chunk. In the first,
a node's position is its index; in the second the positions are mirrored (even node
counts) or shifted by one (odd counts). Interior positions of a tree are the even ones,
and both maps send even positions to odd ones, so every node (but one, when the count is
odd) is interior in at most one tree: its NIC and CPU add for only one half of the data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TreeLinks:
    """One node's neighbours in one tree (node indices)."""

    parent: int | None
    children: tuple[int, ...]


def _lowest_bit(p: int) -> int:
    return p & -p


def binary_tree(n: int, p: int) -> TreeLinks:
    """Links of position ``p`` in a balanced binary tree over positions ``0..n-1``.

    Position 0 is the root and has one child, the largest power of two below ``n``.
    Every other position ``p`` with lowest set bit ``b`` sits above ``p - b/2`` and
    ``p + b/2`` (odd positions are leaves). Its parent is ``p`` rounded to the next
    multiple of ``2b`` above the cleared bit, or the cleared bit alone when that
    position does not exist.
    """
    if not 0 <= p < n:
        raise ValueError(f"position {p} outside a tree of {n} nodes")
    if p == 0:
        top = 1 << ((n - 1).bit_length() - 1) if n > 1 else 0
        return TreeLinks(None, (top,) if top else ())
    b = _lowest_bit(p)
    parent = (p ^ b) | (b << 1)
    if parent >= n:
        parent = p ^ b
    children = []
    half = b >> 1
    if half:
        children.append(p - half)
        while half and p + half >= n:
            half >>= 1
        if half:
            children.append(p + half)
    return TreeLinks(parent, tuple(children))


def _to_position(tree: int, n: int, node: int) -> int:
    if tree == 0:
        return node
    return n - 1 - node if n % 2 == 0 else (node - 1) % n


def _to_node(tree: int, n: int, position: int) -> int:
    if tree == 0:
        return position
    return n - 1 - position if n % 2 == 0 else (position + 1) % n


def double_tree(n: int, node: int) -> tuple[TreeLinks, TreeLinks]:
    """``node``'s links in both trees of the double binary tree over ``n`` nodes."""
    links = []
    for tree in (0, 1):
        t = binary_tree(n, _to_position(tree, n, node))
        parent = None if t.parent is None else _to_node(tree, n, t.parent)
        links.append(TreeLinks(parent, tuple(_to_node(tree, n, c) for c in t.children)))
    return links[0], links[1]
