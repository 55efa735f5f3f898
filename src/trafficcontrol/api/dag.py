"""A layered drawing of the task graph, computed once on the server: ``layout`` is a pure
function of the nodes and the dependency edges.

Design note. Layers run left to right and a node's layer is the longest path to it from
a root (a task with no dependency), so every edge goes from a lower layer to a higher
one and the drawing reads in the order work can run. Within a layer the nodes are
ordered by barycenter sweeps (the mean position of their neighbours in the layers
before, then after, ``SWEEPS`` times) — the classic Sugiyama ordering step without
dummy nodes, which is cheap (O((V + E) log V) per sweep) and good enough to untangle a
backlog. A layer taller than ``max_rows`` is folded into side-by-side sub-columns,
row-major, so the vertical order the sweeps found is kept and a backlog of 2,000
independent tasks is a block, not a column 50,000 pixels tall. Each node gets a grid
cell of its own (no overlaps by construction). Nodes in a cycle (which submission
refuses) or edges naming unknown nodes are drawn as best they can be, never refused:
a cycle's nodes go one layer after the rest and their edges are dropped.

Alternatives rejected: a client-side layout library (a build step or a large
dependency for one page, and 2,000 nodes laid out in each browser on every load);
force-directed layouts (not stable between two refreshes, and no reading order).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SWEEPS = 2
"""Down-and-up barycenter sweeps."""


@dataclass(frozen=True, slots=True)
class Placed:
    """One node's place: its layer, its cell and its box's top-left corner."""

    id: str
    layer: int
    column: int
    """Across all layers: layer ``L``'s sub-columns follow layer ``L - 1``'s."""
    row: int
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Layout:
    nodes: dict[str, Placed]
    """By id, in the input's order."""
    edges: list[tuple[str, str]]
    """(dependency, dependent), both placed; self-loops, unknown ids and cycles dropped."""
    layers: int
    bands: list[tuple[float, float]]
    """Each layer's horizontal extent (left, right), in layer order."""
    width: float
    height: float
    node_w: float
    node_h: float


def layout(
    nodes: Sequence[str],
    edges: Iterable[tuple[str, str]],
    *,
    node_w: float = 132.0,
    node_h: float = 18.0,
    gap_x: float = 48.0,
    gap_fold: float = 8.0,
    gap_y: float = 6.0,
    max_rows: int | None = None,
) -> Layout:
    """Place ``nodes``; ``edges`` are (dependency, dependent) pairs (module notes).
    Layers are ``gap_x`` apart, a folded layer's sub-columns ``gap_fold`` apart.
    ``max_rows`` defaults to a roughly square block: ``max(24, 1.5 * sqrt(n))``."""
    index = {node: i for i, node in enumerate(dict.fromkeys(nodes))}
    ids = list(index)
    succ: list[list[int]] = [[] for _ in ids]
    pred: list[list[int]] = [[] for _ in ids]
    seen: set[tuple[int, int]] = set()
    for a, b in edges:
        i, j = index.get(a), index.get(b)
        if i is None or j is None or i == j or (i, j) in seen:
            continue
        seen.add((i, j))
        succ[i].append(j)
        pred[j].append(i)
    layer = _layers(succ, pred)
    # A cycle's edges go nowhere consistent: keep only the edges that point forward.
    kept = [(i, j) for i, j in seen if layer[i] < layer[j]]
    succ = [[] for _ in ids]
    pred = [[] for _ in ids]
    for i, j in sorted(kept):
        succ[i].append(j)
        pred[j].append(i)
    depth = max(layer, default=-1) + 1
    rows_of: list[list[int]] = [[] for _ in range(depth)]
    for i in range(len(ids)):
        rows_of[layer[i]].append(i)
    _order(rows_of, succ, pred)
    limit = max_rows or max(24, math.ceil(1.5 * math.sqrt(len(ids))))
    pitch_x, pitch_y = node_w + gap_fold, node_h + gap_y
    folds = [max(1, math.ceil(len(members) / limit)) for members in rows_of]
    tallest = max((math.ceil(len(m) / k) for m, k in zip(rows_of, folds, strict=True)), default=0)
    placed: dict[int, Placed] = {}
    bands: list[tuple[float, float]] = []
    column, left = 0, 0.0
    for number, (members, k) in enumerate(zip(rows_of, folds, strict=True)):
        rows = math.ceil(len(members) / k)
        top = (tallest - rows) / 2 * pitch_y
        for position, i in enumerate(members):
            row, sub = divmod(position, k)
            placed[i] = Placed(
                id=ids[i],
                layer=number,
                column=column + sub,
                row=row,
                x=left + sub * pitch_x,
                y=top + row * pitch_y,
            )
        right = left + (k - 1) * pitch_x + node_w
        bands.append((left, right))
        column, left = column + k, right + gap_x
    width = bands[-1][1] if bands else 0.0
    return Layout(
        nodes={ids[i]: placed[i] for i in range(len(ids))},
        edges=[(ids[i], ids[j]) for i, j in sorted(kept)],
        layers=depth,
        bands=bands,
        width=width,
        height=max(tallest * pitch_y - gap_y, 0.0),
        node_w=node_w,
        node_h=node_h,
    )


def _layers(succ: list[list[int]], pred: list[list[int]]) -> list[int]:
    """Longest path from a root (Kahn's order); nodes left in a cycle go last."""
    n = len(succ)
    missing = [len(p) for p in pred]
    layer = [0] * n
    queue = [i for i in range(n) if missing[i] == 0]
    done = 0
    while done < len(queue):
        i = queue[done]
        done += 1
        for j in succ[i]:
            layer[j] = max(layer[j], layer[i] + 1)
            missing[j] -= 1
            if missing[j] == 0:
                queue.append(j)
    if done < n:
        last = max((layer[i] for i in queue), default=-1) + 1
        for i in range(n):
            if missing[i] > 0:
                layer[i] = last
    return layer


def _order(rows_of: list[list[int]], succ: list[list[int]], pred: list[list[int]]) -> None:
    """Barycenter sweeps, in place: down by predecessors, up by successors."""
    where = [0.0] * len(succ)

    def number(members: list[int]) -> None:
        # Centred fractions, so layers of different sizes compare.
        size = len(members)
        for position, i in enumerate(members):
            where[i] = (position + 0.5) / size

    for members in rows_of:
        number(members)
    for _ in range(SWEEPS):
        for sweep, neighbours in (
            (range(1, len(rows_of)), pred),
            (range(len(rows_of) - 2, -1, -1), succ),
        ):
            for number_ in sweep:
                members = rows_of[number_]
                members.sort(key=lambda i: _barycenter(i, neighbours, where))
                number(members)


def _barycenter(i: int, neighbours: list[list[int]], where: list[float]) -> float:
    near = neighbours[i]
    if not near:
        return where[i]
    return sum(where[j] for j in near) / len(near)
