"""Chain tables: one target of a node per chain, balanced recovery reads, known designs."""

from __future__ import annotations

import itertools

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from fs3.errors import ConfigError
from fs3.mgmtd.placement import ChainPlan, plan_chains
from hai.cli import main


@st.composite
def shapes(draw: st.DrawFn) -> tuple[int, int, int]:
    nodes = draw(st.integers(1, 14))
    replicas = draw(st.integers(1, min(nodes, 4)))
    per_node = draw(st.integers(1, 6).filter(lambda t: nodes * t % replicas == 0))
    return nodes, per_node, replicas


@settings(max_examples=60, deadline=None)
@given(shapes())
def test_every_target_in_one_chain_and_no_node_twice_in_a_chain(
    shape: tuple[int, int, int],
) -> None:
    nodes, per_node, replicas = shape
    plan = plan_chains(nodes, per_node, replicas)
    assert len(plan.chains) == nodes * per_node // replicas
    for members in plan.chains:
        assert len(members) == replicas
        assert len({node for node, _ in members}) == replicas  # no two targets on one node
    targets = [plan.target_id(n, s) for members in plan.chains for n, s in members]
    assert sorted(targets) == list(range(1, nodes * per_node + 1))  # each target once
    table = plan.chain_table()
    assert sorted(t for ids in table.values() for t in ids) == sorted(targets)
    assert all(b.chains == per_node for b in plan.balance())
    heads = plan.heads()
    assert per_node // replicas <= min(heads) and max(heads) <= -(-per_node // replicas)
    assert plan_chains(nodes, per_node, replicas) == plan  # deterministic


@settings(max_examples=60, deadline=None)
@given(shapes())
def test_recovery_reads_spread_evenly(shape: tuple[int, int, int]) -> None:
    """When a node fails, the others share its chains within a spread of 2 (1 where a
    design exists): the pair counts sum to what the chains hold, and a BIBD has them equal."""
    nodes, per_node, replicas = shape
    plan = plan_chains(nodes, per_node, replicas)
    shared = plan.shared()
    for b in plan.balance():
        others = [shared[b.node - 1][m] for m in range(nodes) if m != b.node - 1]
        assert sum(others) == per_node * (replicas - 1)
        assert b.max - b.min <= (0 if plan.is_bibd else 2)
    lam = per_node * (replicas - 1) / (nodes - 1) if nodes > 1 else 0
    if replicas >= 2 and lam == int(lam) and lam > 0 and nodes <= 9:
        assert plan.is_bibd, plan.method  # every small design that exists is found


def test_fano_plane() -> None:
    """7 nodes, 3 targets each, 3 replicas: the lines of the Fano plane."""
    plan = plan_chains(7, 3, 3)
    assert plan.is_bibd and "difference family" in plan.method
    shared = plan.shared()
    assert all(shared[a][b] == 1 for a, b in itertools.permutations(range(7), 2))
    lines = [{n for n, _ in members} for members in plan.chains]
    assert len(lines) == 7
    assert all(len(x & y) == 1 for x, y in itertools.combinations(lines, 2))  # lines meet once
    assert all((b.min, b.max, b.stddev) == (1, 1, 0.0) for b in plan.balance())


@pytest.mark.parametrize(
    ("nodes", "per_node", "replicas", "lam", "how"),
    [
        (13, 4, 4, 1, "difference family"),  # projective plane of order 3
        (9, 4, 3, 1, "affine plane"),
        (15, 7, 3, 1, "short orbit"),  # Steiner triple system
        (7, 6, 3, 2, "difference family"),
        (11, 5, 5, 2, "difference family"),
        (5, 6, 3, 3, "all 3-subsets"),
    ],
)
def test_known_designs(nodes: int, per_node: int, replicas: int, lam: int, how: str) -> None:
    plan = plan_chains(nodes, per_node, replicas)
    assert plan.is_bibd and how in plan.method
    assert {plan.shared()[a][b] for a, b in itertools.permutations(range(nodes), 2)} == {lam}


def test_no_design_falls_back_to_greedy() -> None:
    plan = plan_chains(10, 3, 3)  # lambda = 2/3: no BIBD exists
    assert not plan.is_bibd and plan.method == "greedy + local search"
    assert {(b.min, b.max) for b in plan.balance()} == {(0, 1)}  # the best possible


def test_bad_shapes_name_their_values() -> None:
    with pytest.raises(ConfigError, match="14 targets do not split into chains of 3"):
        plan_chains(7, 2, 3)
    with pytest.raises(ConfigError, match=r"replicas must be in \[1, 2\]"):
        plan_chains(2, 3, 3)


def test_chain_table_renames_targets() -> None:
    plan = ChainPlan(2, 1, 2, (((0, 0), (1, 0)),), "by hand")
    assert plan.chain_table([10, 20]) == {1: [10, 20]}


def test_cli_prints_table_and_balance() -> None:
    runner = CliRunner()
    args = ["fs3", "chains", "plan", "--nodes", "7", "--targets-per-node", "3", "--replicas", "3"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "BIBD: yes: every pair of nodes shares 1 chain(s)" in result.output
    rows = [line.split() for line in result.output.splitlines()]
    chains = [r for r in rows if len(r) == 4 and r[0].isdigit() and "@" in r[1]]
    assert len(chains) == 7
    failed = [r for r in rows if len(r) == 5 and r[0].isdigit()]
    assert [r[2:] for r in failed] == [["1", "1", "0.00"]] * 7
    bad = runner.invoke(main, ["fs3", "chains", "plan", "--nodes", "7", "--targets-per-node", "2"])
    assert bad.exit_code == 1 and "do not split into chains of 3" in bad.output
