"""Scenario sampler for training routes: place instances of the implemented scenario types along routes.

Given a network, routes (from a training route file mapped with `envs.routes.map_route`, or random
routes from `envs.routes.random_route`), the wanted types, a density (scenarios per km) and a seed,
`sample_scenarios` asks every type where it may go (`Scenario.candidate_triggers`) and what parameters
it takes (`Scenario.sample_params`), and places instances at least `min_gap` metres apart along each
route. The result is a list of `envs.routes.ScenarioSpec` per route (trigger points in CARLA
coordinates), which `write_routes_xml` writes as a Bench2Drive route file that `parse_routes` reads back
and `DrivingEnv` drives.

Data collected for post-training must come from routes disjoint from the evaluation routes:
`route_overlap` measures how much of a route runs on an evaluation route (within `OVERLAP_RADIUS` m and
heading-aligned), `check_disjoint` refuses routes above a threshold, and the sampler keeps every trigger
at least `EVAL_TRIGGER_RADIUS` m away from an evaluation trigger of the same type.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from envs.routes import RouteFileError, ScenarioSpec, map_route, parse_routes
from envs.scenarios.base import SCENARIOS, Scenario, ScenarioError, load_library
from envs.scene import RoadOption, Route

DEFAULT_DENSITY = 2.0  # scenarios per km of route
DEFAULT_MIN_GAP = 60.0  # metres between two trigger points on a route
OVERLAP_RADIUS = 2.0  # metres: a route point this close to an evaluation route point runs on it ...
OVERLAP_HEADING = math.radians(30.0)  # ... when their headings differ by less than this
DEFAULT_OVERLAP_THRESHOLD = 0.5  # share of a training route allowed on evaluation routes
EVAL_TRIGGER_RADIUS = 30.0  # metres: no sampled trigger this close to an evaluation trigger of its type
WAYPOINT_SPACING = 20.0  # metres between the waypoints written to a route file
# Instances of one type per route: 1 by default, so a route carries different types rather than repeats
# of one (instances have their own actor ids, so repeats work); None = no limit.
DEFAULT_MAX_PER_TYPE: int | None = 1


class SamplerError(ScenarioError):
    """The sampler cannot do what was asked (unknown or unimplemented type, bad density, ...)."""


class RouteOverlapError(SamplerError):
    """A training route runs on evaluation routes, or a trigger sits on an evaluation trigger."""


@dataclass
class SampledRoute:
    """A route and the scenario instances placed on it (trigger points in CARLA coordinates)."""

    route: Route
    scenarios: list[ScenarioSpec] = field(default_factory=list)

    @property
    def route_id(self) -> str:
        return self.route.route_id


@dataclass
class EvalSet:
    """Evaluation routes of one town, mapped onto the network, and their scenario triggers."""

    source: str
    routes: list[Route] = field(default_factory=list)
    triggers: list[tuple[str, str, np.ndarray]] = field(default_factory=list)  # (type, route id, world xy)
    skipped: list[str] = field(default_factory=list)  # route ids that could not be mapped (and why)


# ------------------------------------------------------------------------------------- types
def implemented_types(types: Iterable[str] | None = None) -> list[str]:
    """The registered (implemented) scenario types, in catalogue order, or the given ones checked.

    Raises SamplerError naming unknown or unimplemented types."""
    from envs.scenarios.catalog import TYPES_BY_NAME

    load_library()
    order = {name: k for k, name in enumerate(TYPES_BY_NAME)}
    registered = sorted(SCENARIOS, key=lambda n: (order.get(n, len(order)), n))
    if types is None:
        return registered
    wanted = [t.strip() for t in types if t and t.strip()]
    unknown = [t for t in wanted if t not in SCENARIOS and t not in TYPES_BY_NAME]
    if unknown:
        raise SamplerError(
            f"unknown scenario type(s) {', '.join(unknown)}; Bench2Drive types: {', '.join(TYPES_BY_NAME)}"
        )
    missing = [t for t in wanted if t not in SCENARIOS]
    if missing:
        raise SamplerError(
            f"scenario type(s) not implemented: {', '.join(missing)}; implemented: {', '.join(registered)}"
        )
    return list(dict.fromkeys(wanted))


# ----------------------------------------------------------------------------------- overlap
def _aligned_hits(
    route: Route, points: np.ndarray, yaw: np.ndarray, owner: np.ndarray, radius: float, max_heading: float
) -> tuple[np.ndarray, list[set[int]]]:
    """For route samples every 1 m: whether each lies on (near and heading-aligned with) one of
    `points`, and which owners it lies on."""
    step = max(Route.POINTS_PER_METER, 1)
    idx = np.arange(0, len(route.points), step)
    if len(points) == 0 or len(idx) == 0:
        return np.zeros(len(idx), np.bool_), [set() for _ in idx]
    tree = cKDTree(points)
    near = tree.query_ball_point(route.points[idx], r=radius)
    cos_lim = math.cos(max_heading)
    hit = np.zeros(len(idx), np.bool_)
    owners: list[set[int]] = []
    for k, cand in enumerate(near):
        if not cand:
            owners.append(set())
            continue
        cand = np.asarray(cand, np.int64)
        ok = np.cos(yaw[cand] - route.yaw[idx[k]]) >= cos_lim
        hit[k] = bool(ok.any())
        owners.append({int(o) for o in owner[cand[ok]]})
    return hit, owners


def _eval_points(eval_routes: Sequence[Route]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluation route points every 0.5 m with their headings and route number."""
    step = max(Route.POINTS_PER_METER // 2, 1)
    pts, yaw, owner = [np.zeros((0, 2))], [np.zeros(0)], [np.zeros(0, np.int64)]
    for j, r in enumerate(eval_routes):
        pts.append(r.points[::step])
        yaw.append(r.yaw[::step])
        owner.append(np.full(len(r.points[::step]), j, np.int64))
    return np.concatenate(pts), np.concatenate(yaw), np.concatenate(owner)


def route_overlap(
    route: Route, eval_routes: Sequence[Route], radius: float = OVERLAP_RADIUS,
    max_heading: float = OVERLAP_HEADING,
) -> float:
    """Share (0..1) of `route`'s length that runs within `radius` m of, and heading-aligned (within
    `max_heading` rad) with, any of `eval_routes`."""
    pts, yaw, owner = _eval_points(eval_routes)
    hit, _ = _aligned_hits(route, pts, yaw, owner, radius, max_heading)
    return float(hit.mean()) if len(hit) else 0.0


def overlap_by_route(
    route: Route, eval_routes: Sequence[Route], radius: float = OVERLAP_RADIUS,
    max_heading: float = OVERLAP_HEADING,
) -> tuple[float, dict[str, float]]:
    """(overall overlap share, share per evaluation route id that the route runs on)."""
    pts, yaw, owner = _eval_points(eval_routes)
    hit, owners = _aligned_hits(route, pts, yaw, owner, radius, max_heading)
    if not len(hit):
        return 0.0, {}
    per: dict[str, float] = {}
    for j in sorted(set().union(*owners)):
        share = sum(j in o for o in owners) / len(hit)
        rid = eval_routes[j].route_id
        per[rid] = max(per.get(rid, 0.0), share)
    return float(hit.mean()), per


def load_eval_set(path: str | Path, lanes: object, town: str | None) -> EvalSet:
    """The evaluation routes of `town` in a route file, mapped onto `lanes`, with their triggers.

    `town=None` takes every route of the file. Routes that do not map onto this network are listed in
    `skipped` (their triggers are still kept: they are plain coordinates)."""
    specs = parse_routes(path)
    out = EvalSet(source=str(path))
    for spec in specs:
        if town is not None and spec.town != town:
            continue
        for sc in spec.scenarios:
            xy = lanes.carla_to_world(np.array(sc.trigger_point[:2], dtype=np.float64))
            out.triggers.append((sc.type, spec.route_id, xy))
        try:
            out.routes.append(map_route(spec, lanes))
        except RouteFileError as exc:
            out.skipped.append(f"{spec.route_id}: {exc}")
    return out


def check_disjoint(
    routes: Sequence[Route], eval_set: EvalSet, threshold: float = DEFAULT_OVERLAP_THRESHOLD
) -> dict[str, float]:
    """Overlap share per training route; raises RouteOverlapError naming every training route above
    `threshold` and the evaluation routes it runs on."""
    shares: dict[str, float] = {}
    bad: list[str] = []
    for route in routes:
        total, per = overlap_by_route(route, eval_set.routes)
        shares[route.route_id] = total
        if total > threshold:
            worst = sorted(per.items(), key=lambda kv: -kv[1])[:5]
            names = ", ".join(f"{rid} ({100 * v:.0f}%)" for rid, v in worst)
            bad.append(
                f"training route {route.route_id} runs {100 * total:.0f}% on evaluation routes {names}"
            )
    if bad:
        raise RouteOverlapError(
            "collected data must come from routes disjoint from the evaluation routes "
            f"({eval_set.source}); overlap above {100 * threshold:.0f}%: " + "; ".join(bad)
        )
    return shares


def check_eval_triggers(
    sampled: Sequence[SampledRoute], eval_set: EvalSet, lanes: object, radius: float = EVAL_TRIGGER_RADIUS
) -> None:
    """Raise RouteOverlapError if a sampled trigger lies within `radius` m of an evaluation trigger of
    the same type."""
    bad = []
    for sr in sampled:
        for spec in sr.scenarios:
            xy = lanes.carla_to_world(np.array(spec.trigger_point[:2], dtype=np.float64))
            for typ, rid, exy in eval_set.triggers:
                if typ == spec.type and float(np.hypot(*(exy - xy))) < radius:
                    bad.append(f"{sr.route_id}/{spec.name} is {np.hypot(*(exy - xy)):.0f} m from the "
                               f"{typ} trigger of evaluation route {rid}")
    if bad:
        raise RouteOverlapError(
            f"sampled triggers within {radius:g} m of an evaluation trigger of the same type "
            f"({eval_set.source}): " + "; ".join(bad)
        )


# ---------------------------------------------------------------------------------- sampling
def _route_tree(route: Route) -> cKDTree:
    return cKDTree(route.points)


def _consistent(route: Route, tree: cKDTree, s: np.ndarray, tol: float = 2.0) -> np.ndarray:
    """Candidates whose trigger point projects back onto the route at (about) the same distance: a
    route passing the same place twice would otherwise trigger at the other pass."""
    if len(s) == 0:
        return np.zeros(0, np.bool_)
    idx = np.clip(np.searchsorted(route.cum_length, s), 0, len(route.points) - 1)
    near = tree.query_ball_point(route.points[idx], r=0.5)
    return np.array([bool(np.all(np.abs(route.cum_length[n] - s[k]) <= tol)) for k, n in enumerate(near)])


def candidates_for(
    cls: type[Scenario], route: Route, lanes: object, tree: cKDTree | None = None,
    eval_set: EvalSet | None = None, eval_radius: float = EVAL_TRIGGER_RADIUS,
) -> np.ndarray:
    """The type's candidate trigger distances on `route`, kept to those that project back onto the route
    at the same place and lie at least `eval_radius` m from an evaluation trigger of the same type."""
    s = np.asarray(cls.candidate_triggers(route, lanes), dtype=np.float64).reshape(-1)
    s = np.unique(s[np.isfinite(s) & (s >= 0.0) & (s <= route.length)])
    if len(s) == 0:
        return s
    s = s[_consistent(route, tree if tree is not None else _route_tree(route), s)]
    if eval_set is not None and len(s):
        mine = [xy for typ, _rid, xy in eval_set.triggers if typ == cls.type_name]
        if mine:
            idx = np.clip(np.searchsorted(route.cum_length, s), 0, len(route.points) - 1)
            d = cKDTree(np.asarray(mine)).query(route.points[idx])[0]
            s = s[d >= eval_radius]
    return s


def trigger_of(route: Route, lanes: object, s: float) -> tuple[float, float, float, float]:
    """CARLA (x, y, z, yaw in degrees) of the route point at distance s."""
    idx = int(np.clip(np.searchsorted(route.cum_length, s), 0, len(route.points) - 1))
    cx, cy = lanes.world_to_carla(np.asarray(route.points[idx], dtype=np.float64))
    yaw = -math.degrees(float(route.yaw[idx]))
    return round(float(cx), 2), round(float(cy), 2), 0.0, round(yaw, 1) + 0.0


def sample_route(
    route: Route,
    lanes: object,
    types: Sequence[str],
    density: float,
    rng: np.random.Generator,
    min_gap: float = DEFAULT_MIN_GAP,
    eval_set: EvalSet | None = None,
    max_per_type: int | None = DEFAULT_MAX_PER_TYPE,
) -> SampledRoute:
    """Place about `density` x km instances of `types` on one route (fewer when candidates run out, or
    when every type reached `max_per_type` instances)."""
    load_library()
    tree = _route_tree(route)
    cands = {t: candidates_for(SCENARIOS[t], route, lanes, tree, eval_set) for t in types}
    cands = {t: c for t, c in cands.items() if len(c)}
    expected = density * route.length / 1000.0
    n = int(expected) + int(rng.random() < expected - int(expected))
    placed: list[tuple[float, str, dict]] = []
    for _ in range(n):
        taken = np.array([p[0] for p in placed])
        avail = {}
        for t, c in cands.items():
            if max_per_type is not None and sum(p[1] == t for p in placed) >= max_per_type:
                continue
            free = c if not len(taken) else c[np.min(np.abs(c[:, None] - taken[None, :]), axis=1) >= min_gap]
            if len(free):
                avail[t] = free
        if not avail:
            break
        names = sorted(avail)
        t = names[int(rng.integers(len(names)))]
        s = float(avail[t][int(rng.integers(len(avail[t])))])
        placed.append((s, t, SCENARIOS[t].sample_params(rng) or {}))
    placed.sort(key=lambda p: p[0])
    counter: dict[str, int] = {}
    specs = []
    for s, t, params in placed:
        counter[t] = counter.get(t, 0) + 1
        specs.append(ScenarioSpec(f"{t}_{counter[t]}", t, trigger_of(route, lanes, s), _clean_params(params)))
    return SampledRoute(route, specs)


def _clean_params(params: dict) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, attrs in params.items():
        if isinstance(attrs, dict):
            out[str(key)] = {str(k): _fmt(v) for k, v in attrs.items()}
        else:
            out[str(key)] = {"value": _fmt(attrs)}
    return out


def _fmt(v: object) -> str:
    if isinstance(v, float | np.floating):
        return f"{float(v):.6g}"
    return str(v)


def sample_scenarios(
    lanes: object,
    routes: Sequence[Route],
    types: Iterable[str] | None = None,
    density: float = DEFAULT_DENSITY,
    seed: int = 0,
    min_gap: float = DEFAULT_MIN_GAP,
    eval_set: EvalSet | None = None,
    overlap_threshold: float = DEFAULT_OVERLAP_THRESHOLD,
    max_per_type: int | None = DEFAULT_MAX_PER_TYPE,
) -> list[SampledRoute]:
    """Scenario instances for every route (deterministic in `seed`; route k draws from its own stream).

    With `eval_set`, training routes overlapping the evaluation routes beyond `overlap_threshold` are
    refused (RouteOverlapError) and no trigger is placed near an evaluation trigger of the same type."""
    if not density >= 0.0 or not math.isfinite(density):
        raise SamplerError(f"density must be a finite number >= 0 scenarios per km, got {density}")
    if min_gap < 0.0:
        raise SamplerError(f"min_gap must be >= 0 m, got {min_gap}")
    if max_per_type is not None and max_per_type < 1:
        raise SamplerError(f"max_per_type must be >= 1 (or None for no limit), got {max_per_type}")
    chosen = implemented_types(types)
    if not chosen:
        raise SamplerError("no scenario types to sample (none implemented or none chosen)")
    if eval_set is not None:
        check_disjoint(routes, eval_set, overlap_threshold)
    out = []
    for k, route in enumerate(routes):
        rng = np.random.default_rng([int(seed), k])
        out.append(sample_route(route, lanes, chosen, density, rng, min_gap, eval_set, max_per_type))
    if eval_set is not None:
        check_eval_triggers(out, eval_set, lanes)
    return out


# ---------------------------------------------------------------------------------- writing
def waypoint_indices(route: Route, lanes: object, spacing: float = WAYPOINT_SPACING) -> np.ndarray:
    """Dense-route indices of the sparse waypoints that pin the route down for `map_route`: the start,
    the end, every `spacing` m, and the middle of every lane the route runs on (junction lanes included,
    so the turn is unambiguous); points inside lane-change blends are left out (between two lanes)."""
    n = len(route.points)
    if n == 0:
        return np.zeros(0, np.int64)
    cum = route.cum_length
    keys = set(np.searchsorted(cum, np.arange(0.0, route.length, spacing)).tolist())
    lane = np.asarray(route.lane)
    starts = np.flatnonzero(np.concatenate([[True], lane[1:] != lane[:-1]]))
    ends = np.concatenate([starts[1:], [n]])
    for a, b in zip(starts, ends, strict=True):
        mid = int(np.searchsorted(cum, 0.5 * (cum[a] + cum[b - 1])))
        keys.add(min(max(mid, int(a)), int(b) - 1))
    cmd = np.asarray(route.command)
    blend = (cmd == int(RoadOption.CHANGELANELEFT)) | (cmd == int(RoadOption.CHANGELANERIGHT))
    keys = {k for k in keys if 0 <= k < n and not blend[k]}
    keys |= {0, n - 1}
    return np.asarray(sorted(keys), np.int64)


def route_element(sr: SampledRoute, lanes: object, town: str = "", spacing: float = WAYPOINT_SPACING
                  ) -> ET.Element:
    """The `<route>` element of one sampled route (Bench2Drive / Leaderboard 2.0 format)."""
    route = sr.route
    elem = ET.Element("route", {"id": str(route.route_id), "town": route.town or town})
    wps = ET.SubElement(elem, "waypoints")
    for i in waypoint_indices(route, lanes, spacing):
        cx, cy = lanes.world_to_carla(np.asarray(route.points[i], dtype=np.float64))
        yaw = _deg(-math.degrees(float(route.yaw[i])))
        ET.SubElement(wps, "position", {"x": f"{cx:.2f}", "y": f"{cy:.2f}", "z": "0.0", "yaw": yaw})
    scs = ET.SubElement(elem, "scenarios")
    for spec in sr.scenarios:
        sc = ET.SubElement(scs, "scenario", {"name": spec.name, "type": spec.type})
        for tag, attrs in spec.params.items():
            ET.SubElement(sc, tag, {k: str(v) for k, v in attrs.items()})
        x, y, z, yaw = spec.trigger_point
        tp = {"x": f"{x:.2f}", "y": f"{y:.2f}", "z": f"{z:.1f}", "yaw": _deg(yaw)}
        ET.SubElement(sc, "trigger_point", tp)
    return elem


def _deg(yaw: float) -> str:
    return f"{round(float(yaw), 1) + 0.0:.1f}"  # + 0.0: no "-0.0"


def write_routes_xml(
    path: str | Path, routes_with_scenarios: Sequence[SampledRoute], lanes: object, town: str = "",
    spacing: float = WAYPOINT_SPACING,
) -> Path:
    """Write a Bench2Drive-format route file: per route its id, town (the route's, else `town`),
    sparse waypoints (`<position x y z yaw/>`, CARLA coordinates) and `<scenarios>`. `parse_routes` +
    `map_route` on the same network give back the same route."""
    ids = [sr.route_id for sr in routes_with_scenarios]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise SamplerError(f"route ids must be unique in a route file; repeated: {', '.join(dup)}")
    root = ET.Element("routes")
    for sr in routes_with_scenarios:
        root.append(route_element(sr, lanes, town, spacing))
    ET.indent(root, space="   ")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def summary_lines(sampled: Sequence[SampledRoute]) -> list[str]:
    """Human-readable summary: one line per route, then instances per type and the density reached."""
    lines = []
    per_type: dict[str, int] = {}
    km = 0.0
    for sr in sampled:
        km += sr.route.length / 1000.0
        types = [s.type for s in sr.scenarios]
        for t in types:
            per_type[t] = per_type.get(t, 0) + 1
        lines.append(f"route {sr.route_id} ({sr.route.town or '-'}, {sr.route.length:.0f} m): "
                     f"{len(types)} scenarios {', '.join(types) if types else ''}".rstrip())
    total = sum(per_type.values())
    lines.append(f"{total} scenarios on {len(sampled)} routes, {km:.2f} km "
                 f"({total / km if km > 0 else 0.0:.2f} per km)")
    for t, c in sorted(per_type.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {t}: {c}")
    return lines
