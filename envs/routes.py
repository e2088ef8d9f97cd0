"""Route files (Bench2Drive / Leaderboard 2.0 and Leaderboard 1.0 XML) and their mapping onto a `LaneGraph`.

`parse_routes` reads either format into `RouteSpec`s in CARLA coordinates. `map_route` matches every
waypoint onto a drivable lane, connects consecutive matches by the cheapest lane-level path (so the
sparse Leaderboard 1.0 waypoints, hundreds of metres apart, follow the roads) and builds the dense
`envs.scene.Route`. `random_route` draws a random drivable route for data collection.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from envs.maps.network import LaneGraph
from envs.route_graph import LANE_CHANGE_MIN_LANE, Piece, RouteGraph, build_route, join_pieces, route_graph
from envs.scene import Route

EMISSION_PER_METRE = 10.0  # cost of matching a waypoint 1 m away from the lane centre
EMISSION_HEADING = 25.0  # cost of a heading mismatch, times (1 - cos(mismatch))
MAX_CANDIDATES = 12
MAX_KINK = math.radians(30.0)  # random routes with a sharper heading step between points (broken geometry
# in some converted nets, e.g. the 2019 Town03's tiny lanes that double back) are drawn again


class RouteFileError(ValueError):
    pass


class RouteOffMapError(RouteFileError):
    pass


@dataclass
class ScenarioSpec:
    name: str
    type: str
    trigger_point: tuple[float, float, float, float]  # CARLA x, y, z, yaw (deg)
    params: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class RouteSpec:
    route_id: str
    town: str
    waypoints: np.ndarray  # (N, 2) CARLA x, y
    z: np.ndarray  # (N,)
    yaw: np.ndarray | None  # (N,) CARLA yaw (deg) where the file gives it (Leaderboard 1.0)
    scenarios: list[ScenarioSpec] = field(default_factory=list)
    weathers: list[dict[str, str]] = field(default_factory=list)
    attrs: dict[str, str] = field(default_factory=dict)  # the <route> element's other attributes
    source_file: str = ""


# ------------------------------------------------------------------------------------ parsing
def _float(value: str | None, what: str) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RouteFileError(f"{what}: non-numeric or missing value {value!r}") from None


def _parse_route(elem: ET.Element, k: int, path: Path) -> RouteSpec:
    rid = elem.get("id")
    if not rid:
        raise RouteFileError(f"{path}: route #{k} (counting from 0) has no id")
    where = f"{path}: route {rid}"
    block = elem.find("waypoints")
    points = list(block.iter("position")) if block is not None else list(elem.findall("waypoint"))
    if len(points) < 2:
        raise RouteFileError(f"{where} has {len(points)} waypoint(s); at least 2 are needed")
    xyz = np.array(
        [
            [_float(p.get(c), f"{where}, <{p.tag}> #{i} attribute {c}") for c in ("x", "y", "z")]
            if p.get("z") is not None
            else [_float(p.get(c), f"{where}, <{p.tag}> #{i} attribute {c}") for c in ("x", "y")] + [0.0]
            for i, p in enumerate(points)
        ]
    )
    yaw = None
    if all(p.get("yaw") is not None for p in points):
        yaw = np.array(
            [_float(p.get("yaw"), f"{where}, <{p.tag}> #{i} attribute yaw") for i, p in enumerate(points)]
        )
    scenarios = []
    for j, sc in enumerate(elem.iter("scenario")):
        name = sc.get("name", f"scenario{j}")
        tp = sc.find("trigger_point")
        if tp is None:
            raise RouteFileError(f"{where}: scenario {name!r} has no <trigger_point>")
        what = f"{where}, scenario {name!r} <trigger_point> attribute"
        trigger = tuple(
            _float(tp.get(c, "0" if c in ("z", "yaw") else None), f"{what} {c}")
            for c in ("x", "y", "z", "yaw")
        )
        params = {child.tag: dict(child.attrib) for child in sc if child.tag != "trigger_point"}
        scenarios.append(ScenarioSpec(name, sc.get("type", ""), trigger, params))  # type: ignore[arg-type]
    weathers = [dict(w.attrib) for w in elem.iter("weather")]
    attrs = {key: v for key, v in elem.attrib.items() if key not in ("id", "town")}
    return RouteSpec(
        rid,
        elem.get("town", ""),
        xyz[:, :2].copy(),
        xyz[:, 2].copy(),
        yaw,
        scenarios,
        weathers,
        attrs,
        str(path),
    )


def parse_routes(path: str | Path) -> list[RouteSpec]:
    """Every route in a Bench2Drive / Leaderboard 2.0 or Leaderboard 1.0 route file."""
    path = Path(path)
    if not path.is_file():
        raise RouteFileError(f"route file not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        line, col = exc.position
        raise RouteFileError(f"malformed route XML in {path} at line {line}, column {col}: {exc}") from None
    if root.tag != "routes":
        raise RouteFileError(f"{path} is not a route file (root element <{root.tag}>, expected <routes>)")
    return [_parse_route(elem, k, path) for k, elem in enumerate(root.findall("route"))]


def select_routes(specs: list[RouteSpec], ids: Iterable[str | int]) -> list[RouteSpec]:
    """The routes with the given ids, in the order asked."""
    by_id = {s.route_id: s for s in specs}
    wanted = [str(i) for i in ids]
    unknown = [i for i in wanted if i not in by_id]
    if unknown:
        shown = ", ".join(list(by_id)[:20]) + (" ..." if len(by_id) > 20 else "")
        raise RouteFileError(f"unknown route id(s) {', '.join(unknown)}; available: {shown}")
    return [by_id[i] for i in wanted]


# ------------------------------------------------------------------------------------ mapping
@dataclass
class RouteMatch:
    """Where each waypoint landed: lane index, arc length on it, distance to its centre; and the path."""

    lane: np.ndarray  # (N,) int
    s: np.ndarray  # (N,)
    distance: np.ndarray  # (N,) metres from the waypoint to the matched lane centre
    pieces: list[Piece]


def _nearest_drivable_distance(lanes: LaneGraph, xy: np.ndarray) -> float:
    mask = lanes.drivable[lanes.seg_lane]
    a, b = lanes.seg_a[mask], lanes.seg_b[mask]
    d = b - a
    t = np.clip(np.einsum("ij,ij->i", xy - a, d) / np.maximum(np.einsum("ij,ij->i", d, d), 1e-12), 0.0, 1.0)
    return float(np.min(np.linalg.norm(a + t[:, None] * d - xy, axis=1))) if len(a) else math.inf


def _headings(world: np.ndarray, yaw_deg: np.ndarray | None) -> list[float | None]:
    if yaw_deg is not None:
        return [LaneGraph.carla_yaw_to_world(float(y)) for y in yaw_deg]
    out: list[float | None] = []
    for i in range(len(world)):
        d = world[min(i + 1, len(world) - 1)] - world[max(i - 1, 0)]
        out.append(math.atan2(d[1], d[0]) if np.hypot(*d) > 0.1 else None)
    return out


def match_route(spec: RouteSpec, lanes: LaneGraph, max_offset: float = 4.0) -> RouteMatch:
    """Match every waypoint onto a drivable lane and connect them: a Viterbi pass over lane candidates.

    Candidate cost: distance and heading mismatch to the lane; transition cost: the lane-graph path
    length (with lane-change penalties) between consecutive candidates.
    """
    graph = route_graph(lanes)
    world = lanes.carla_to_world(spec.waypoints)
    heads = _headings(world, spec.yaw)
    cands: list[list[tuple[int, float, float, float]]] = []  # (lane, s, distance, emission cost)
    for i, ((x, y), h) in enumerate(zip(world, heads, strict=True)):
        found = lanes.nearest_lanes(float(x), float(y), radius=max_offset)
        if not found:
            d = _nearest_drivable_distance(lanes, world[i])
            cx, cy = spec.waypoints[i]
            raise RouteOffMapError(
                f"route {spec.route_id} ({spec.town}): waypoint {i} at CARLA ({cx:.1f}, {cy:.1f}) is "
                f"{d:.1f} m from the nearest drivable lane (max_offset {max_offset:g} m)"
            )
        row = []
        for lane, dist, s, lyaw in found:
            # Every lane nearby is a candidate, the wrong direction too (at a cost): a waypoint's yaw may
            # belong to a road crossing under or over the one the route follows.
            mismatch = 0.0 if h is None else 1.0 - math.cos(h - lyaw)
            s = min(max(s, 0.0), float(graph.length[lane]))
            row.append((lane, s, dist, EMISSION_PER_METRE * dist + EMISSION_HEADING * mismatch))
        cands.append(sorted(row, key=lambda c: c[3])[:MAX_CANDIDATES])

    cost = np.array([c[3] for c in cands[0]])
    back: list[list[tuple[int, list[Piece]]]] = []
    for i in range(len(cands) - 1):
        gap = float(np.hypot(*(world[i + 1] - world[i])))
        targets = [(c[0], c[1]) for c in cands[i + 1]]
        trans = _transitions(graph, cands[i], targets, cost, 2.0 * gap + 60.0)
        if all(t is None for row in trans for t in row):
            trans = _transitions(graph, cands[i], targets, cost, math.inf)
        new_cost = np.full(len(targets), math.inf)
        links: list[tuple[int, list[Piece]]] = [(-1, [])] * len(targets)
        for a, row in enumerate(trans):
            for b, t in enumerate(row):
                if t is not None and cost[a] + t[0] + cands[i + 1][b][3] < new_cost[b]:
                    new_cost[b] = cost[a] + t[0] + cands[i + 1][b][3]
                    links[b] = (a, t[1])
        if not np.isfinite(new_cost).any():
            (ax, ay), (bx, by) = spec.waypoints[i], spec.waypoints[i + 1]
            raise RouteOffMapError(
                f"route {spec.route_id} ({spec.town}): waypoints {i} at CARLA ({ax:.1f}, {ay:.1f}) and "
                f"{i + 1} at ({bx:.1f}, {by:.1f}) are not connected in the lane graph"
            )
        cost = new_cost
        back.append(links)

    b = int(np.argmin(cost))
    chosen = [b]
    parts: list[list[Piece]] = []
    for links in reversed(back):
        a, pieces = links[b]
        parts.append(pieces)
        chosen.append(a)
        b = a
    chosen.reverse()
    parts.reverse()
    picked = [cands[i][c] for i, c in enumerate(chosen)]
    if len(picked) == 1 or not parts:
        parts = [[Piece(picked[0][0], picked[0][1], picked[0][1])]]
    return RouteMatch(
        lane=np.array([p[0] for p in picked], np.int64),
        s=np.array([p[1] for p in picked]),
        distance=np.array([p[2] for p in picked]),
        pieces=join_pieces(parts, graph),
    )


def _transitions(
    graph: RouteGraph,
    sources: list[tuple[int, float, float, float]],
    targets: list[tuple[int, float]],
    cost: np.ndarray,
    cutoff: float,
) -> list[list[tuple[float, list[Piece]] | None]]:
    return [
        graph.search((lane, s), targets, cutoff) if np.isfinite(cost[a]) else [None] * len(targets)
        for a, (lane, s, _, _) in enumerate(sources)
    ]


def map_route(spec: RouteSpec, lanes: LaneGraph, max_offset: float = 4.0) -> Route:
    """The dense `Route` through the spec's waypoints on this network (see `match_route`)."""
    match = match_route(spec, lanes, max_offset)
    return build_route(route_graph(lanes), match.pieces, spec.route_id, spec.town)


# ------------------------------------------------------------------------------------- random
def random_route(
    lanes: LaneGraph,
    rng: np.random.Generator,
    min_length: float = 200.0,
    max_length: float = 1000.0,
    lane_change_prob: float = 0.3,
    town: str = "",
) -> Route:
    """A random drivable route: a random walk over lane successors (with occasional lane changes)."""
    if not 0 < min_length <= max_length:
        raise ValueError(f"need 0 < min_length <= max_length, got {min_length}, {max_length}")
    graph = route_graph(lanes)
    starts = [i for i in range(len(lanes)) if lanes.drivable[i] and not graph.internal[i] and graph.succ[i]]
    if not starts:
        raise RouteFileError(f"network {lanes.net_path} has no drivable lanes to start a route on")
    tag = int(rng.integers(0, 2**31))
    for _ in range(200):
        pieces = _random_walk(
            graph, rng, starts, float(rng.uniform(min_length, max_length)), min_length, lane_change_prob
        )
        if pieces is None:
            continue
        route = build_route(graph, pieces, f"random-{tag}", town)
        kink = np.abs(np.angle(np.exp(1j * np.diff(route.yaw)))).max(initial=0.0)
        if kink <= MAX_KINK:
            return route
    raise RouteFileError(f"no route of at least {min_length:g} m found on {lanes.net_path}")


def _random_walk(
    graph: RouteGraph,
    rng: np.random.Generator,
    starts: list[int],
    target: float,
    min_length: float,
    lane_change_prob: float,
) -> list[Piece] | None:
    lane = starts[int(rng.integers(len(starts)))]
    s = float(rng.uniform(0.0, 0.5)) * float(graph.length[lane])
    change, total = 0, 0.0
    pieces: list[Piece] = []
    visited = {lane}
    while True:
        length = float(graph.length[lane])
        nbs = [(nb, side) for nb, side in ((graph.left[lane], 1), (graph.right[lane], -1)) if nb >= 0]
        if (
            nbs
            and graph.can_change(lane, s)
            and length - s >= 4 * LANE_CHANGE_MIN_LANE
            and rng.random() < lane_change_prob
        ):
            mid = s + 0.5 * (length - s)
            step = min(mid - s, target - total)
            pieces.append(Piece(lane, s, s + step, change))
            total += step
            if total >= target:
                return pieces
            nb, change = nbs[int(rng.integers(len(nbs)))]
            s, lane = mid * float(graph.length[nb]) / length, nb
            visited.add(lane)
            continue
        if length - s >= target - total:
            pieces.append(Piece(lane, s, s + (target - total), change))
            return pieces
        pieces.append(Piece(lane, s, length, change))
        total += length - s
        options = [n for n in graph.succ[lane] if n not in visited]
        if not options:
            return pieces if total >= min_length else None
        lane, s, change = options[int(rng.integers(len(options)))], 0.0, 0
        visited.add(lane)
