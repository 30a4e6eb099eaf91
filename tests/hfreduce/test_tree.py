"""The double binary tree: well-formed trees whose interior nodes barely overlap."""

from __future__ import annotations

import math

import pytest

from hfreduce.tree import binary_tree, double_tree


@pytest.mark.parametrize("n", range(1, 70))
def test_each_tree_is_a_spanning_tree_with_log_depth(n: int) -> None:
    for tree in (0, 1):
        links = [double_tree(n, v)[tree] for v in range(n)]
        roots = [v for v, link in enumerate(links) if link.parent is None]
        assert len(roots) == 1
        for v, link in enumerate(links):
            assert len(link.children) <= 2
            for child in link.children:
                assert links[child].parent == v, f"n={n} tree={tree}: {child} not under {v}"
        # every node reaches the root, within about log2(n) hops
        for v in range(n):
            hops, u = 0, v
            while links[u].parent is not None:
                u, hops = links[u].parent, hops + 1
                assert hops <= n
            assert u == roots[0]
            assert hops <= math.ceil(math.log2(n)) + 1 if n > 1 else hops == 0


@pytest.mark.parametrize("n", range(2, 70))
def test_nodes_are_interior_in_at_most_one_tree(n: int) -> None:
    both = [v for v in range(n) if all(t.children for t in double_tree(n, v))]
    assert len(both) <= (n % 2), f"n={n}: interior in both trees: {both}"


def test_position_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="position 4 outside a tree of 4 nodes"):
        binary_tree(4, 4)
