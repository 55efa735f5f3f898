"""The DAG page's layout (``api.dag.layout``): layers by longest path, every edge forward,
one cell per node, at the sizes the dashboard must draw."""

from __future__ import annotations

import itertools
import random

import pytest

from trafficcontrol.api.dag import Layout, layout


def random_dag(n: int, seed: int, *, max_deps: int = 3) -> tuple[list[str], list[tuple[str, str]]]:
    """``n`` tasks, each depending on up to ``max_deps`` earlier ones (listed shuffled)."""
    rng = random.Random(seed)
    nodes = [f"task-{i:04d}" for i in range(n)]
    edges = [
        (nodes[rng.randrange(i)], nodes[i])
        for i in range(1, n)
        for _ in range(rng.randrange(max_deps + 1))
    ]
    rng.shuffle(nodes)
    return nodes, edges


def assert_sound(drawn: Layout, nodes: list[str], edges: list[tuple[str, str]]) -> None:
    assert list(drawn.nodes) == list(dict.fromkeys(nodes))
    assert set(drawn.edges) == set(edges)
    for a, b in drawn.edges:
        pa, pb = drawn.nodes[a], drawn.nodes[b]
        assert pa.layer < pb.layer, (a, b)
        assert pa.x + drawn.node_w < pb.x, (a, b)  # drawn left to right
    # Longest path: a node sits one layer after its deepest dependency (roots at 0).
    deps: dict[str, list[str]] = {}
    for a, b in edges:
        deps.setdefault(b, []).append(a)
    for node, place in drawn.nodes.items():
        below = [drawn.nodes[d].layer for d in deps.get(node, [])]
        assert place.layer == (max(below) + 1 if below else 0), node
    # No two boxes overlap, and every box is inside the drawing.
    cells = {(p.column, p.row) for p in drawn.nodes.values()}
    assert len(cells) == len(drawn.nodes)
    boxes = sorted((p.x, p.y) for p in drawn.nodes.values())
    by_column: dict[float, list[float]] = {}
    for x, y in boxes:
        by_column.setdefault(x, []).append(y)
    columns = sorted(by_column)
    for left, right in itertools.pairwise(columns):
        assert right - left >= drawn.node_w
    for ys in by_column.values():
        for top, below_top in itertools.pairwise(ys):
            assert below_top - top >= drawn.node_h
    assert len(drawn.bands) == drawn.layers
    for (_, right), (left, _) in itertools.pairwise(drawn.bands):
        assert right < left  # layers never share a column
    for p in drawn.nodes.values():
        band = drawn.bands[p.layer]
        assert band[0] <= p.x and p.x + drawn.node_w <= band[1]
        assert p.x >= 0 and p.x + drawn.node_w <= drawn.width + 1e-6
        assert p.y >= 0 and p.y + drawn.node_h <= drawn.height + 1e-6


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_thousand_nodes_are_layered_forward_without_overlaps(seed: int) -> None:
    nodes, edges = random_dag(2000, seed)
    drawn = layout(nodes, edges)
    assert_sound(drawn, nodes, edges)
    assert drawn.layers == 1 + max(p.layer for p in drawn.nodes.values())


def test_a_wide_flat_backlog_folds_into_a_block() -> None:
    nodes = [f"t{i}" for i in range(2000)]
    drawn = layout(nodes, [])
    assert_sound(drawn, nodes, [])
    assert drawn.layers == 1
    assert drawn.height < 3 * drawn.width  # not one column 2,000 boxes tall


def test_chain_and_diamond_layers() -> None:
    edges = [("a", "b"), ("b", "c"), ("a", "d"), ("d", "c"), ("c", "e"), ("a", "e")]
    drawn = layout(["e", "d", "c", "b", "a"], edges)
    assert_sound(drawn, ["e", "d", "c", "b", "a"], edges)
    assert {n: p.layer for n, p in drawn.nodes.items()} == {"a": 0, "b": 1, "d": 1, "c": 2, "e": 3}


def crossings(drawn: Layout) -> int:
    lines = [(drawn.nodes[a], drawn.nodes[b]) for a, b in drawn.edges]
    return sum(
        1
        for i, (a1, b1) in enumerate(lines)
        for a2, b2 in lines[i + 1 :]
        if a1.layer == a2.layer and b1.layer == b2.layer and (a1.y - a2.y) * (b1.y - b2.y) < 0
    )


def test_barycenter_ordering_untangles_crossed_pairs() -> None:
    # Listed so that input order would cross every pair: x0->y0 ... with ys reversed.
    xs = [f"x{i}" for i in range(6)]
    ys = [f"y{i}" for i in reversed(range(6))]
    edges = [(f"x{i}", f"y{i}") for i in range(6)]
    drawn = layout(xs + ys, edges)
    assert_sound(drawn, xs + ys, edges)
    assert crossings(drawn) == 0


def test_bad_input_is_drawn_not_refused() -> None:
    """Unknown ids, self-loops, duplicates and a cycle (which submission refuses)."""
    edges = [("a", "b"), ("b", "a"), ("a", "a"), ("x", "a"), ("c", "d"), ("c", "d")]
    drawn = layout(["a", "b", "c", "d", "c"], edges)
    assert list(drawn.nodes) == ["a", "b", "c", "d"]
    assert drawn.edges == [("c", "d")]
    cells = {(p.column, p.row) for p in drawn.nodes.values()}
    assert len(cells) == 4
    assert layout([], []).nodes == {}
