"""Chain tables for N storage nodes x T targets per node at replication R.

Each target belongs to one chain, each chain has R targets on R different nodes, so a node
sits in T chains and there are N*T/R chains. When a node fails, each of its chains is
rebuilt from the chain's surviving members: node m's share of the recovery reads is the
number of chains it shares with the failed node. The table is balanced when every pair of
nodes shares the same number of chains, lambda = T(R-1)/(N-1): a balanced incomplete block
design (BIBD) with v=N points, blocks of size k=R, each point in r=T blocks. 3FS finds one
with an integer-programming solver (``deploy/data_placement``); here known constructions
are tried first:

* all R-subsets of the nodes (the complete design), when T is a multiple of C(N-1, R-1);
* the affine plane AG(2, p) for a prime p, N = p*p, R = p (lines of a p x p grid);
* a cyclic difference family over Z_N found by backtracking (this finds the Fano plane
  {0,1,3} mod 7, the projective planes of order 3 and 4, and many lambda > 1 designs),
  with one short orbit where T = 1 (mod R) (the cyclic Steiner triple systems of order 9,
  15, 21, ...);
* any of these repeated T/T0 times when a design with T0 | T exists.

Where none exists (lambda is not an integer) or none was found within the search budget, a
greedy pass builds a table and a local search swaps nodes between chains to even out the
pair counts. Heads are then assigned so that each node leads T/R chains (rounded), since the
head serialises every write to its chain.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from fs3.errors import ConfigError

Block = tuple[int, ...]  # the nodes of one chain (0-based)

_SEARCH_STEPS = 200_000  # backtracking steps per difference-family search (~0.2 s)
_COMPLETE_MAX = 20_000  # the complete design is tried only up to this many blocks


@dataclass(frozen=True)
class NodeBalance:
    """What the other nodes read when ``node`` (1-based) fails: the chains each shares."""

    node: int
    chains: int
    min: int
    max: int
    stddev: float


@dataclass(frozen=True)
class ChainPlan:
    """A chain table: ``chains[i]`` lists chain ``i + 1``'s targets head first, each as
    ``(node, slot)`` with 0-based node and slot; ``method`` says how it was built."""

    nodes: int
    targets_per_node: int
    replicas: int
    chains: tuple[tuple[tuple[int, int], ...], ...]
    method: str

    def target_id(self, node: int, slot: int) -> int:
        """Targets are numbered node by node from 1: node 0 has 1..T, node 1 T+1..2T."""
        return node * self.targets_per_node + slot + 1

    def chain_table(self, target_ids: list[int] | None = None) -> dict[int, list[int]]:
        """Chain id (from 1) -> target ids head first. ``target_ids`` renames targets: the
        ``i``-th target in node order (see :meth:`target_id`) becomes ``target_ids[i]``."""
        ids = target_ids or list(range(1, self.nodes * self.targets_per_node + 1))
        return {
            c + 1: [ids[self.target_id(n, s) - 1] for n, s in members]
            for c, members in enumerate(self.chains)
        }

    def shared(self) -> list[list[int]]:
        """``shared()[a][b]``: chains holding targets of both node a and node b (a != b)."""
        counts = [[0] * self.nodes for _ in range(self.nodes)]
        for members in self.chains:
            for (a, _), (b, _) in itertools.permutations(members, 2):
                counts[a][b] += 1
        return counts

    def balance(self) -> list[NodeBalance]:
        """Per failed node, the recovery read load over the remaining nodes."""
        shared = self.shared()
        out = []
        for n in range(self.nodes):
            loads = [shared[n][m] for m in range(self.nodes) if m != n] or [0]
            chains = sum(1 for members in self.chains if any(x == n for x, _ in members))
            out.append(NodeBalance(n + 1, chains, min(loads), max(loads), statistics.pstdev(loads)))
        return out

    @property
    def is_bibd(self) -> bool:
        """Whether every pair of nodes shares the same number of chains (R >= 2)."""
        shared = self.shared()
        pairs = {shared[a][b] for a in range(self.nodes) for b in range(a + 1, self.nodes)}
        return self.replicas >= 2 and len(pairs) == 1

    def heads(self) -> list[int]:
        """Chains each node (0-based index) leads."""
        count = [0] * self.nodes
        for members in self.chains:
            count[members[0][0]] += 1
        return count


def plan_chains(nodes: int, targets_per_node: int, replicas: int, seed: int = 0) -> ChainPlan:
    """Builds a chain table; deterministic for given arguments and ``seed``.

    Raises:
        ConfigError: replicas outside [1, nodes], fewer than one target per node, or
            ``nodes * targets_per_node`` targets that do not split into chains of
            ``replicas``.
    """
    n, t, r = nodes, targets_per_node, replicas
    if n < 1 or t < 1:
        raise ConfigError(f"need at least 1 node and 1 target per node, got {n} x {t}")
    if not 1 <= r <= n:
        raise ConfigError(f"replicas must be in [1, {n}] (one target per node), got {r}")
    if (n * t) % r:
        raise ConfigError(
            f"{n} nodes x {t} targets = {n * t} targets do not split into chains of {r}; "
            f"pick targets per node so that nodes x targets is a multiple of {r}"
        )
    found = _design(n, t, r)
    if found is not None:
        blocks, method = found
    else:
        blocks = _local_search(_greedy(n, t, r), n, random.Random(seed))
        method = "greedy + local search"
    return ChainPlan(n, t, r, _assign_targets(_order_heads(blocks, n, t, r), n), method)


# -- designs -------------------------------------------------------------------------------
@cache
def _design(n: int, t: int, r: int) -> tuple[list[Block], str] | None:
    """A BIBD with these parameters from a known construction, or None."""
    if r == 1:
        return [(x,) for x in range(n) for _ in range(t)], "one replica: no recovery reads"
    if (t * (r - 1)) % (n - 1):
        return None  # lambda would not be an integer: no BIBD exists
    per_node = math.comb(n - 1, r - 1)
    if t % per_node == 0 and math.comb(n, r) * (t // per_node) <= _COMPLETE_MAX:
        every = list(itertools.combinations(range(n), r))
        return every * (t // per_node), f"all {r}-subsets of the nodes x{t // per_node}"
    p = math.isqrt(n)
    if p * p == n and p == r and _is_prime(p) and t % (p + 1) == 0:
        return _affine_plane(p) * (t // (p + 1)), f"affine plane AG(2,{p}) x{t // (p + 1)}"
    # Cyclic: t/r base blocks developed mod n; or, when r divides n and t = 1 (mod r), also
    # one short orbit {0, n/r, 2n/r, ...} (n/r blocks, each node in one), the way cyclic
    # Steiner triple systems of order 3 (mod 6) are built.
    short = n // r if t % r == 1 and n % r == 0 and t > 1 else 0
    if t % r == 0 or short:
        base = _difference_family(n, r, t // r, t * (r - 1) // (n - 1), short)
        if base is not None:
            blocks = [tuple(sorted((x + i) % n for x in b)) for b in base for i in range(n)]
            shown = " ".join("{" + ",".join(map(str, b)) + "}" for b in base)
            if short:
                blocks += [tuple(range(i, n, short)) for i in range(short)]
                shown += " + {" + ",".join(map(str, range(0, n, short))) + "} (short orbit)"
            return blocks, f"cyclic difference family {shown} mod {n}"
    for factor in _prime_factors(t):
        smaller = _design(n, t // factor, r)
        if smaller is not None:
            return smaller[0] * factor, f"{smaller[1]} x{factor}"
    return None


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, math.isqrt(p) + 1))


def _prime_factors(x: int) -> list[int]:
    return [d for d in range(2, x + 1) if x % d == 0 and _is_prime(d)]


def _affine_plane(p: int) -> list[Block]:
    """Lines of the p x p grid over Z_p (node x*p + y): p+1 slopes of p lines each."""
    lines = [
        tuple(sorted(x * p + (m * x + c) % p for x in range(p))) for m in range(p) for c in range(p)
    ]
    return lines + [tuple(c * p + y for y in range(p)) for c in range(p)]


def _difference_family(n: int, k: int, blocks: int, lam: int, short: int = 0) -> list[Block] | None:
    """``blocks`` base blocks of size ``k`` in Z_n, each containing 0, whose differences
    cover every nonzero residue exactly ``lam`` times (multiples of ``short`` once less, a
    short orbit covering those); None if the search budget runs out.

    Developing each base block (adding 0..n-1) gives n chains, so every node is in
    ``blocks * k`` chains and every pair of nodes in ``lam``.
    """
    need = [0] + [lam] * (n - 1)
    if short:
        for d in range(short, n, short):
            need[d] -= 1
    if blocks == 0:
        return [] if all(v == 0 for v in need) else None
    steps = [0]
    chosen: list[list[int]] = []

    def extend(block: list[int]) -> bool:
        steps[0] += 1
        if steps[0] > _SEARCH_STEPS:
            return False
        if len(block) == k:
            chosen.append(block)
            # All blocks placed with no residue over lam means each is covered exactly lam
            # times: blocks * k(k-1) differences = lam(n-1).
            ok = len(chosen) == blocks or extend([0])
            if not ok:
                chosen.pop()
            return ok
        # Symmetry: elements increase within a block, and blocks in lexicographic order.
        low = block[-1] + 1
        prev = chosen[-1] if chosen and len(block) < k else None
        for e in range(low, n - (k - len(block) - 1)):
            if prev is not None and block + [e] < prev[: len(block) + 1]:
                continue
            diffs = [(e - b) % n for b in block] + [(b - e) % n for b in block]
            for d in diffs:
                need[d] -= 1
            if all(need[d] >= 0 for d in diffs) and extend(block + [e]):
                return True
            for d in diffs:
                need[d] += 1
            if steps[0] > _SEARCH_STEPS:
                return False
        return False

    return [tuple(b) for b in chosen] if extend([0]) else None


# -- greedy + local search -----------------------------------------------------------------
def _greedy(n: int, t: int, r: int) -> list[Block]:
    """Chains one at a time from the nodes with the most targets left, fewest shared chains
    first. A node with as many targets left as chains left must join every remaining chain,
    so it is always taken; that keeps every step feasible (sum left = R x chains left)."""
    left = [t] * n
    shared = [[0] * n for _ in range(n)]
    blocks: list[Block] = []
    for remaining in range(n * t // r, 0, -1):
        block = [x for x in range(n) if left[x] == remaining]
        while len(block) < r:
            best = min(
                (x for x in range(n) if left[x] > 0 and x not in block),
                key=lambda x: (sum(shared[x][y] for y in block), -left[x], x),
            )
            block.append(best)
        for a, b in itertools.permutations(block, 2):
            shared[a][b] += 1
        for x in block:
            left[x] -= 1
        blocks.append(tuple(sorted(block)))
    return blocks


def _local_search(blocks: list[Block], n: int, rng: random.Random) -> list[Block]:
    """Swaps a node of one chain with a node of another while that lowers the sum of
    squared pair counts (so the counts approach their mean); node degrees never change."""
    chains = [list(b) for b in blocks]
    if len(chains) < 2 or len(chains[0]) < 2:
        return blocks
    shared = [[0] * n for _ in range(n)]
    for b in chains:
        for a, c in itertools.permutations(b, 2):
            shared[a][c] += 1
    pairs = n * (n - 1) // 2
    total = sum(shared[a][c] for a in range(n) for c in range(a + 1, n))
    low, high = total // pairs, -(-total // pairs)

    def spread() -> bool:
        return any(not low <= shared[a][c] <= high for a in range(n) for c in range(a + 1, n))

    # ~5 us a step: at most 2 s, and a small table gets enough steps to leave plateaus.
    for step in range(min(400_000, max(50_000, 300 * len(chains)))):
        if step % 1000 == 0 and not spread():
            break
        x, y = rng.sample(range(len(chains)), 2)
        a, b = rng.choice(chains[x]), rng.choice(chains[y])
        if a == b or b in chains[x] or a in chains[y]:
            continue
        rest_x = [c for c in chains[x] if c != a]
        rest_y = [c for c in chains[y] if c != b]
        delta: dict[tuple[int, int], int] = {}
        for c in rest_x:
            delta[(a, c)] = delta.get((a, c), 0) - 1
            delta[(b, c)] = delta.get((b, c), 0) + 1
        for c in rest_y:
            delta[(b, c)] = delta.get((b, c), 0) - 1
            delta[(a, c)] = delta.get((a, c), 0) + 1
        gain = sum((shared[p][q] + d) ** 2 - shared[p][q] ** 2 for (p, q), d in delta.items())
        if gain < 0 or (gain == 0 and rng.random() < 0.2):  # sideways moves leave plateaus
            for (p, q), d in delta.items():
                shared[p][q] += d
                shared[q][p] += d
            chains[x] = rest_x + [b]
            chains[y] = rest_y + [a]
    return [tuple(sorted(b)) for b in chains]


# -- heads and targets ---------------------------------------------------------------------
def _order_heads(blocks: list[Block], n: int, t: int, r: int) -> list[Block]:
    """Puts a head first in each chain so that every node leads floor(T/R) or ceil(T/R)
    chains: greedy, then alternating paths move heads from nodes with too many to nodes
    with too few (a balanced assignment always exists: give each member 1/R of a head)."""
    low, high = t // r, -(-t // r)
    members = [list(b) for b in blocks]
    head = []
    count = [0] * n
    for b in members:
        h = min(b, key=lambda x: (count[x], x))
        head.append(h)
        count[h] += 1
    for node in range(n):
        while count[node] > high and _move_head(members, head, count, node, high, True):
            pass
        while count[node] < low and _move_head(members, head, count, node, low, False):
            pass
    out = []
    for b, h in zip(members, head, strict=True):
        i = b.index(h)
        out.append(tuple(b[i:] + b[:i]))  # rotate: head first, others keep their order
    return out


def _move_head(
    members: list[list[int]],
    head: list[int],
    count: list[int],
    start: int,
    bound: int,
    shed: bool,
) -> bool:
    """One alternating path from ``start``: when ``shed``, hands one of its heads on along
    chains until a node below ``bound`` takes it; otherwise takes one, from a node above
    ``bound``. Returns whether a path was found."""
    by_node: dict[int, list[int]] = {}
    for c, b in enumerate(members):
        for x in b:
            by_node.setdefault(x, []).append(c)
    came: dict[int, tuple[int, int]] = {}  # node -> (previous node, chain between them)
    frontier, seen = [start], {start}
    while frontier:
        nxt = []
        for x in frontier:
            # shed: chains x leads, passed to another member; take: chains x is in, from
            # their head.
            for c in by_node.get(x, []):
                if shed and head[c] == x:
                    candidates = [y for y in members[c] if y != x]
                elif not shed and head[c] != x:
                    candidates = [head[c]]
                else:
                    continue
                for y in candidates:
                    if y in seen:
                        continue
                    seen.add(y)
                    came[y] = (x, c)
                    if (count[y] < bound) if shed else (count[y] > bound):
                        _apply_path(came, head, count, start, y, shed)
                        return True
                    nxt.append(y)
        frontier = nxt
    return False


def _apply_path(
    came: dict[int, tuple[int, int]],
    head: list[int],
    count: list[int],
    start: int,
    end: int,
    shed: bool,
) -> None:
    y = end
    while y != start:
        x, c = came[y]
        head[c] = y if shed else x
        y = x
    count[start] += -1 if shed else 1
    count[end] += 1 if shed else -1


def _assign_targets(blocks: Iterable[Block], n: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Gives each node's occurrences its slots 0, 1, ... in chain order."""
    used = [0] * n
    out = []
    for b in blocks:
        members = []
        for x in b:
            members.append((x, used[x]))
            used[x] += 1
        out.append(tuple(members))
    return tuple(out)


def format_plan(plan: ChainPlan, table: bool = True) -> str:
    """The chain table (unless ``table`` is False) and its balance figures, as text."""
    n, t, r = plan.nodes, plan.targets_per_node, plan.replicas
    balance = plan.balance()
    loads = [plan.shared()[a][b] for a in range(n) for b in range(n) if a != b] or [0]
    ideal = t * (r - 1) / (n - 1) if n > 1 else 0.0
    if plan.is_bibd:
        verdict = f"yes: every pair of nodes shares {loads[0]} chain(s)"
    elif r == 1:
        verdict = "no (one replica: nothing to recover from)"
    elif ideal != int(ideal):
        verdict = f"no (none exists: lambda = T(R-1)/(N-1) = {ideal:.3g} is not an integer)"
    else:
        verdict = "no (none found)"
    lines = [
        f"chain table: {n} nodes x {t} targets per node, {r} replicas: {len(plan.chains)} chains",
        f"built by: {plan.method}",
        f"BIBD: {verdict}",
    ]
    if table:
        lines += ["", "chain  targets, head first (target@node)"]
        for c, members in enumerate(plan.chains):
            cells = "  ".join(f"{plan.target_id(x, s)}@{x + 1}" for x, s in members)
            lines.append(f"{c + 1:>5}  {cells}")
    lines += [
        "",
        "recovery reads when a node fails: chains each other node shares with it",
        f"{'failed node':>11}  {'its chains':>10}  {'min':>4}  {'max':>4}  {'stddev':>6}",
    ]
    for b in balance:
        lines.append(f"{b.node:>11}  {b.chains:>10}  {b.min:>4}  {b.max:>4}  {b.stddev:>6.2f}")
    heads = plan.heads()
    lines += [
        f"all nodes: min {min(loads)}, max {max(loads)}, stddev {statistics.pstdev(loads):.2f} "
        f"(mean lambda = T(R-1)/(N-1) = {ideal:.3g})",
        f"chains led per node: min {min(heads)}, max {max(heads)} (T/R = {t / r:.3g})",
    ]
    return "\n".join(lines)
