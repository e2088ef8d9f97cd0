"""Scenarios driven by other vehicles: hard braking, cut-ins, parked cars, emergency vehicles, highway merges.

Facts (distances, speeds, trigger rules, end conditions) follow Bench2Drive's scenario-runner
definitions (hard_break.py, parking_exit.py, parking_cut_in.py, cut_in_with_static_vehicle.py,
yield_to_emergency_vehicle.py, highway_cut_in.py, actor_flow.py, sequentially_lane_change.py).

Vehicles that must move where SUMO's drivers would not (a car pulling out of a parking spot, a cut-in
from a queue or an on-ramp) are scripted: a `_PathCar` drives along a precomputed polyline with a speed
the scenario sets, and joins the Scene through `scripted_agents`. Parked cars outside the lanes are
scripted boxes; where they stand on a SUMO lane a hidden stopped SUMO vehicle sits under them so that
SUMO's traffic does not drive through them. Flows of vehicles (highway merges and exits) and the
emergency vehicle are ordinary SUMO vehicles.
"""

from __future__ import annotations

import contextlib
import math
from typing import ClassVar

import numpy as np

from envs.infractions import InfractionType
from envs.scenarios.actors import ActorFlow
from envs.scenarios.base import Scenario, ScenarioError, register_scenario
from envs.scenarios.placement import (
    JunctionPass,
    junction_approaches,
    junction_passes,
    lane_heading,
    normal_successors,
    straightest,
    upstream,
    wrap,
)
from envs.scene import AgentKind, Agents, Route, Scene

HARD_BRAKE_DECEL = 8.0  # m/s^2, an emergency stop of the vehicles ahead
CAR_HALF_LENGTH, CAR_HALF_WIDTH, CAR_HEIGHT = 2.4, 1.0, 1.5
# SUMO lane-change mode for scenario vehicles that must keep their lane: strategic changes only (to
# follow their route), no cooperative / speed-gain / keep-right changes, respecting others' speed.
LC_STRATEGIC_ONLY = 0b10_00_00_00_01
SHALLOW = math.radians(35.0)  # ramps join / leave a road at a shallow angle


# ------------------------------------------------------------------------------------ helpers
def _smoothstep(t: np.ndarray | float) -> np.ndarray | float:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _route_frame(route: Route, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Route points, yaws and left normals at route distances `s` (clamped to the route)."""
    s = np.atleast_1d(np.asarray(s, np.float64))
    idx = np.clip(np.searchsorted(route.cum_length, s), 0, len(route.points) - 1)
    yaw = np.asarray(route.yaw)[idx]
    left = np.stack([-np.sin(yaw), np.cos(yaw)], axis=1)
    return route.points[idx], yaw, left


def _project(route: Route, xy: np.ndarray) -> tuple[float, float]:
    """(signed lateral offset, left positive; route distance) of the route point nearest to `xy`."""
    d = np.hypot(route.points[:, 0] - xy[0], route.points[:, 1] - xy[1])
    k = int(np.argmin(d))
    yaw = float(route.yaw[k])
    rel = np.asarray(xy, np.float64) - route.points[k]
    return float(-rel[0] * math.sin(yaw) + rel[1] * math.cos(yaw)), float(route.cum_length[k])


def _resample(points: np.ndarray, step: float = 0.5) -> np.ndarray:
    pts = np.asarray(points, np.float64)
    keep = np.concatenate([[True], np.hypot(*np.diff(pts, axis=0).T) > 1e-6])
    pts = pts[keep]
    if len(pts) < 2:
        return pts
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    s = np.arange(0.0, cum[-1], step)
    s = np.append(s, cum[-1])
    return np.stack([np.interp(s, cum, pts[:, 0]), np.interp(s, cum, pts[:, 1])], axis=1)


def _point_internal(route: Route, lanes) -> np.ndarray:
    """Per dense route point: True where it is not on a normal drivable lane (junction or off-lane)."""
    lane = np.asarray(route.lane)
    bad = lane < 0
    ok = ~bad
    bad[ok] = np.asarray(lanes.is_internal)[lane[ok]]
    return bad


def _window_clear(route: Route, bad: np.ndarray, s: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """For each s: no `bad` route point within [s + lo, s + hi] (and the window lies on the route)."""
    csum = np.concatenate([[0], np.cumsum(bad)])
    a = np.searchsorted(route.cum_length, s + lo)
    b = np.searchsorted(route.cum_length, s + hi, side="right")
    inside = (s + lo >= 0.0) & (s + hi <= route.length)
    return inside & (csum[np.clip(b, 0, len(bad))] - csum[np.clip(a, 0, len(bad))] == 0)


def _lane_changes(route: Route, lanes) -> list[tuple[float, int, int]]:
    """(route distance, from lane, to lane) of each lane change of the route (same edge, other lane)."""
    lane = np.asarray(route.lane)
    out = []
    for k in np.flatnonzero(lane[1:] != lane[:-1]):
        a, b = int(lane[k]), int(lane[k + 1])
        if a < 0 or b < 0 or lanes.is_internal[a] or lanes.is_internal[b]:
            continue
        if lanes.edge_of_lane[a] == lanes.edge_of_lane[b]:
            out.append((float(route.cum_length[k + 1]), a, b))
    return out


def _edge_lanes(lanes, edge: str) -> list[int]:
    cache = getattr(lanes, "_edge_lane_cache", None)
    if cache is None:
        cache = {}
        for i in range(len(lanes)):
            cache.setdefault(lanes.edge_of_lane[i], []).append(i)
        lanes._edge_lane_cache = cache
    return cache.get(edge, [])


def _ramp_merges(route: Route, lanes, ego_on: str) -> list[tuple[JunctionPass, list[int]]]:
    """Junctions where another road joins the route's road at a shallow angle: (junction pass, the other
    road's lanes entering it that lead onto the route's out edge). `ego_on` 'main': the route comes on the
    road with at least as many lanes (an on-ramp joins it); 'ramp': on the road with fewer lanes."""
    out = []
    for jp in junction_passes(route, lanes):
        in_edge = lanes.edge_of_lane[jp.in_lane]
        n_in = len(_edge_lanes(lanes, in_edge))
        out_edge = lanes.edge_of_lane[jp.out_lane]
        yaw_in = lane_heading(lanes, jp.in_lane, at_end=True)
        others = []
        for ap in junction_approaches(lanes, jp):
            if lanes.edge_of_lane[ap.lane] == in_edge:
                continue
            if abs(wrap(lane_heading(lanes, ap.lane, at_end=True) - yaw_in)) > SHALLOW:
                continue
            n_other = len(_edge_lanes(lanes, lanes.edge_of_lane[ap.lane]))
            if (n_in >= n_other) != (ego_on == "main"):
                continue
            if any(lanes.edge_of_lane[nxt] == out_edge for _, nxt, _ in ap.exits):
                others.append(ap.lane)
        if others:
            out.append((jp, others))
    return out


def _exits(route: Route, lanes) -> list[JunctionPass]:
    """Junctions where the route's road splits at a shallow angle (a highway exit) and the route takes one
    of the branches."""
    out = []
    for jp in junction_passes(route, lanes):
        yaw_in = lane_heading(lanes, jp.in_lane, at_end=True)
        branches = set()
        for ln in _edge_lanes(lanes, lanes.edge_of_lane[jp.in_lane]):
            for _, nxt in normal_successors(lanes, ln):
                if lanes.drivable[nxt] and abs(wrap(lane_heading(lanes, nxt, False) - yaw_in)) < SHALLOW:
                    branches.add(lanes.edge_of_lane[nxt])
        if len(branches) >= 2:
            out.append(jp)
    return out


def _downstream(lanes, lane: int, pos: float, distance: float) -> tuple[int, float]:
    """(lane, position) `distance` metres after (`lane`, `pos`), following the straightest successors
    (junction-internal lanes count towards the distance); stops at the network's edge."""
    remaining = distance + pos
    while remaining > float(lanes.length[lane]):
        succ = [(v, n) for v, n in normal_successors(lanes, lane) if lanes.drivable[n]]
        if not succ:
            return lane, float(lanes.length[lane])
        remaining -= float(lanes.length[lane])
        target = straightest(lanes, [n for _, n in succ], lane_heading(lanes, lane, at_end=True))
        via = next(v for v, n in succ if n == target)
        if via >= 0:
            remaining = max(remaining - float(lanes.length[via]), 0.0)
        lane = target
    return lane, remaining


def _lane_chain_polyline(lanes, lane: int, pos: float, length: float) -> np.ndarray:
    """The centre line from (`lane`, `pos`) on over `length` metres, through junction-internal lanes,
    following the straightest successors."""
    pl = lanes.polyline(lane)
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pl, axis=0).T))])
    x0, y0, _ = lanes.position_on_lane(lane, pos)
    parts = [np.array([[x0, y0]]), pl[cum > pos]]
    covered = float(cum[-1] - pos)
    while covered < length:
        succ = [(v, n) for v, n in normal_successors(lanes, lane) if lanes.drivable[n]]
        if not succ:
            break
        yaw = lane_heading(lanes, lane, at_end=True)
        target = straightest(lanes, [n for _, n in succ], yaw)
        via = next(v for v, n in succ if n == target)
        if via >= 0:
            parts.append(lanes.polyline(via))
            covered += float(lanes.length[via])
        parts.append(lanes.polyline(target))
        covered += float(lanes.length[target])
        lane = target
    return _resample(np.concatenate(parts))


def _nearest_normal_lane(lanes, xy: np.ndarray, radius: float = 6.0) -> tuple[int, float]:
    for lane, _d, s, _yaw in lanes.nearest_lanes(float(xy[0]), float(xy[1]), radius=radius):
        if lanes.drivable[lane] and not lanes.is_internal[lane] and not lanes.is_sidewalk[lane]:
            return int(lane), float(s)
    return -1, 0.0


def _agent_rows(rows: list[tuple]) -> Agents:
    """Agents from rows (id, kind, x, y, yaw, half_length, half_width, height, speed, colour)."""
    n = len(rows)
    if n == 0:
        return Agents()
    yaw = np.array([r[4] for r in rows])
    speed = np.array([r[8] for r in rows], np.float64)
    return Agents(
        ids=[r[0] for r in rows],
        kind=np.array([r[1] for r in rows], np.int8),
        box=np.array([(r[2], r[3], r[4], r[5], r[6]) for r in rows], np.float64),
        height=np.array([r[7] for r in rows]),
        velocity=np.column_stack([speed * np.cos(yaw), speed * np.sin(yaw)]),
        speed=speed,
        accel=np.zeros(n),
        color=np.array([r[9] for r in rows], np.uint8).reshape(n, 3),
    )


class _PathCar:
    """A scripted car moving along a polyline; the scenario sets its speed every tick."""

    def __init__(self, vid: str, path: np.ndarray, kind: int = AgentKind.VEHICLE,
                 color: tuple[int, int, int] = (0, 0, 0)) -> None:
        self.id = vid
        self.kind = int(kind)
        self.color = color
        self.speed = 0.0
        self.travelled = 0.0  # metres driven since it was made
        self.set_path(path)

    def set_path(self, path: np.ndarray) -> None:
        self.path = _resample(path)
        self.cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(self.path, axis=0).T))])
        self.u = 0.0

    @property
    def remaining(self) -> float:
        return float(self.cum[-1] - self.u)

    def pose(self) -> tuple[float, float, float]:
        u = min(self.u, float(self.cum[-1]))
        x = float(np.interp(u, self.cum, self.path[:, 0]))
        y = float(np.interp(u, self.cum, self.path[:, 1]))
        k = int(np.clip(np.searchsorted(self.cum, u + 1.0), 1, len(self.path) - 1))
        j = int(np.clip(np.searchsorted(self.cum, u - 1.0), 0, k - 1))
        d = self.path[k] - self.path[j]
        return x, y, math.atan2(d[1], d[0])

    def position(self) -> np.ndarray:
        x, y, _ = self.pose()
        return np.array([x, y])

    def drive(self, target_speed: float, dt: float, accel: float = 3.5, decel: float = 6.0) -> None:
        dv = float(np.clip(target_speed - self.speed, -decel * dt, accel * dt))
        self.speed = max(self.speed + dv, 0.0)
        step = min(self.speed * dt, self.remaining)
        self.u += step
        self.travelled += step
        if self.remaining <= 1e-6:
            self.speed = 0.0

    def row(self) -> tuple:
        x, y, yaw = self.pose()
        return (self.id, self.kind, x, y, yaw, CAR_HALF_LENGTH, CAR_HALF_WIDTH, CAR_HEIGHT, self.speed,
                self.color)


class _VehicleScenario(Scenario):
    """Shared geometry for the vehicle scenarios."""

    def _fail(self, reason: str) -> ScenarioError:
        return ScenarioError(f"route {self.ctx.route_id}: scenario {self.name} ({self.type_name}) {reason}")

    def _direction(self) -> str:
        d = self.param("direction")
        if d not in ("left", "right"):
            raise self._fail(f"direction must be 'left' or 'right', got {d!r}")
        return d

    def _side(self, s: float, direction: str) -> tuple[int, float, float, float]:
        """(side lane or -1, position on it, lateral offset of its centre (left positive), route lane
        width) next to the route's lane at route distance s."""
        lanes = self.ctx.lanes
        lane, _pos = self.route_lane_at(s)
        nb = int(lanes.right[lane] if direction == "right" else lanes.left[lane])
        width = float(lanes.width[lane])
        if nb < 0 or not lanes.drivable[nb] or lanes.is_sidewalk[nb]:
            return -1, 0.0, 0.0, width
        p, _yaw, _left = _route_frame(self.ctx.route, s)
        for cand, _d, s_lane, _y in lanes.nearest_lanes(float(p[0, 0]), float(p[0, 1]), radius=8.0):
            if cand == nb:
                x, y, _ = lanes.position_on_lane(nb, s_lane)
                lat, _ = _project(self.ctx.route, np.array([x, y]))
                return nb, float(s_lane), lat, width
        return -1, 0.0, 0.0, width

    def _parking_offset(self, s: float, direction: str) -> tuple[float, int, float]:
        """Lateral offset (left positive) of a car parked on the `direction` side at route distance s,
        as scenario-runner displaces it towards the kerb; and the SUMO lane / position it stands on
        (-1 when it stands beside the road)."""
        sign = -1.0 if direction == "right" else 1.0
        nb, pos, lat, width = self._side(s, direction)
        if nb >= 0:
            w_side = float(self.ctx.lanes.width[nb])
            return lat + sign * max(w_side - CAR_HALF_WIDTH, 0.0) / 4.0, nb, pos
        return sign * (0.5 * width + CAR_HALF_WIDTH + 0.3), -1, 0.0

    def _offset_path(self, s0: float, d0: float, blend: float, length: float) -> np.ndarray:
        """Points from route distance s0 over `length` metres, starting `d0` metres left of the route and
        blending onto it over `blend` metres."""
        s = np.arange(s0, s0 + length, 0.5)
        p, _yaw, left = _route_frame(self.ctx.route, s)
        d = d0 * (1.0 - _smoothstep((s - s0) / max(blend, 1e-6)))
        return p + left * d[:, None]

    def _parked_path(self, s: float, d: float) -> np.ndarray:
        """A 3 m stub `d` metres left of the route at route distance s (a standing car's pose)."""
        return self._offset_path(s, d, 1e9, 3.0)

    def _clear_route(self, s0: float, s1: float, radius: float = 2.0) -> int:
        """Remove background vehicles on the route's lane between route distances s0 and s1."""
        s = np.arange(max(s0, 0.0), min(s1, self.ctx.route.length), 2.0)
        if len(s) == 0:
            return 0
        p, _, _ = _route_frame(self.ctx.route, s)
        return self.ctx.backend.remove_vehicles_near(p, radius)

    def _park(self, vid: str, lane: int, pos: float, kind: int = AgentKind.PARKED_VEHICLE,
              hidden: bool = False) -> None:
        """A stopped SUMO vehicle centred at `pos` on `lane`. Background vehicles on the lane up to 150 m
        behind are removed first: SUMO refuses to insert a stopped vehicle in front of one that could not
        brake for it."""
        lanes = self.ctx.lanes
        back = [upstream(lanes, lane, pos, d) for d in np.arange(-10.0, 150.0, 4.0)]
        pts = np.array([lanes.position_on_lane(ln, p)[:2] for ln, p in back])
        self.ctx.backend.remove_vehicles_near(pts, 2.0)
        self.ctx.backend.park_vehicle(vid, lanes.lane_ids[lane], pos + CAR_HALF_LENGTH, kind=kind,
                                      hidden=hidden)

    def _park_blocker(self, vid: str, lane: int, pos: float) -> None:
        """A hidden stopped SUMO vehicle under a scripted car, so that SUMO traffic stops behind it."""
        self._park(vid, lane, pos, hidden=True)

    def _remove(self, vid: str) -> None:
        backend = self.ctx.backend
        if vid in backend.vehicle_ids():
            backend.ls.vehicle.remove(vid)
        else:
            with contextlib.suppress(Exception):
                backend.ls.vehicle.remove(vid)  # still waiting for insertion

    def _tta_close(self, scene: Scene, xy: np.ndarray, reaction_time: float, min_dist: float) -> bool:
        """Scenario-runner's InTimeToArrivalToLocation or InTriggerDistanceToLocation for the ego."""
        dist = math.hypot(scene.ego.x - xy[0], scene.ego.y - xy[1])
        return dist < min_dist or dist / max(scene.ego.speed, 1e-3) < reaction_time

    def _edges_joining_route(self, lane: int, s_route: float) -> list[str]:
        """Edges for a SUMO vehicle starting on `lane` (behind the route) that joins the route at route
        distance `s_route` and follows it to its end."""
        route_edges, _, _, _ = self.lane_position(max(s_route, 0.0))
        start_edge = self.ctx.lanes.edge_of_lane[lane]
        if start_edge in route_edges:
            return route_edges[route_edges.index(start_edge):]
        found = self.ctx.backend.ls.simulation.findRoute(start_edge, route_edges[0])
        path = list(found.edges)
        if not path:
            raise self._fail("found no road from behind the route onto it")
        return path + route_edges[1:]


# ----------------------------------------------------------------------------------- HardBreak
@register_scenario
class HardBreakRoute(_VehicleScenario):
    """The traffic ahead of the ego brakes hard at the trigger point, stays stopped, then drives on."""

    type_name = "HardBreakRoute"
    defaults: ClassVar[dict[str, str]] = {"stop_duration": "10", "lead_distance": "25"}
    differs_from_carla = ("a lead vehicle is inserted ahead of the ego (CARLA stops the background traffic "
                          "in front); it and any vehicle ahead on the ego lane brake at 8 m/s^2")
    key_moment_s = 2.0
    LEAD = "sc_hardbrake_lead"
    actor_ids = ("LEAD",)
    STOP_AHEAD = 60.0  # metres ahead of the ego in which route traffic stops with the lead

    def setup(self) -> None:
        self._lead_added = False
        self._phase = "approach"
        self._stop_ticks = 0
        self._braking: list[str] = []

    def tick(self, scene: Scene) -> None:
        backend = self.ctx.backend
        ego_s = self.ego_s(scene)
        lead_gap = self.float_param("lead_distance")
        if not self._lead_added and ego_s >= self.trigger_s - 80.0:
            edges, lane, pos, _ = self.lane_position(ego_s + lead_gap)
            backend.add_vehicle(
                self.LEAD, edges, lane, pos, speed=max(scene.ego.speed, 5.0), color=(200, 40, 40)
            )
            backend.ls.vehicle.setLaneChangeMode(self.LEAD, LC_STRATEGIC_ONLY)  # it stays in the ego lane
            self._lead_added = True
        if not self.status.triggered or self.LEAD not in backend.vehicle_ids():
            return
        ls = backend.ls
        alive = set(backend.vehicle_ids())
        if self._phase == "braking":
            stopped = True
            for vid in self._braking:
                if vid not in alive:
                    continue
                v = max(ls.vehicle.getSpeed(vid) - HARD_BRAKE_DECEL * scene.dt, 0.0)
                ls.vehicle.setSpeed(vid, v)
                stopped &= v == 0.0 or vid != self.LEAD
            if stopped:
                self._phase = "stopped"
        elif self._phase == "stopped":
            self._stop_ticks += 1
            for vid in self._braking:
                if vid in alive:
                    ls.vehicle.setSpeed(vid, max(ls.vehicle.getSpeed(vid) - HARD_BRAKE_DECEL * scene.dt, 0.0))
            if self._stop_ticks * scene.dt >= self.float_param("stop_duration"):
                for vid in self._braking:
                    if vid in alive:
                        ls.vehicle.setSpeedMode(vid, 31)
                        ls.vehicle.setSpeed(vid, -1)
                self._phase = "released"

    def on_trigger(self, scene: Scene) -> None:
        backend = self.ctx.backend
        ids = backend.vehicle_ids()
        if self.LEAD not in ids:
            return
        ego_s = self.ego_s(scene)
        self._braking = [self.LEAD]
        for vid in ids:  # scenario-runner stops every vehicle in front of the ego
            if not vid.startswith("bg"):
                continue
            lat, s = _project(self.ctx.route, np.asarray(backend.ls.vehicle.getPosition(vid)))
            if abs(lat) < 1.5 and ego_s < s < ego_s + self.STOP_AHEAD:
                self._braking.append(vid)
        for vid in self._braking:
            backend.ls.vehicle.setSpeedMode(vid, 0)  # ignore safe-speed limits: brake at our rate
        self._phase = "braking"
        self.status.notes.append(f"{len(self._braking)} vehicle(s) ahead brake hard")


# ----------------------------------------------------------------------------------- ParkingExit
@register_scenario
class ParkingExit(_VehicleScenario):
    """The ego starts between two parked vehicles (front / behind distances) and must merge into traffic;
    a vehicle next to the parking spot drives off first. Timeout: 240 s to drive front + 15 m."""

    type_name = "ParkingExit"
    defaults: ClassVar[dict[str, str]] = {
        "direction": "right",
        "front_vehicle_distance": "20",
        "behind_vehicle_distance": "10",
        "flow_distance": "25",
        "speed": "60",
    }
    ignored = ()
    differs_from_carla = ("the ego starts on the route's first point in its lane (not teleported into the "
                          "parking spot): the parked cars stand beside it at the kerb and the side car "
                          "drives off ahead of it")
    key_moment_s = 1.0
    TIMEOUT_S = 240.0
    SIDE = "sc_parkexit_side"
    actor_ids = ("SIDE",)
    SIDE_END_DISTANCE = 50.0

    @classmethod
    def candidate_triggers(cls, route: Route, lanes: object) -> np.ndarray:
        bad = _point_internal(route, lanes)
        if route.length < 60.0 or bad[: 30 * Route.POINTS_PER_METER].any():
            return np.zeros(0)
        return np.array([0.0])  # scenario-runner: the route's first point

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        return {"direction": {"value": "right"}, "front_vehicle_distance": {"value": "9"},
                "behind_vehicle_distance": {"value": "9"}}

    def setup(self) -> None:
        direction = self._direction()
        front = self.float_param("front_vehicle_distance")
        behind = self.float_param("behind_vehicle_distance")
        lanes, route = self.ctx.lanes, self.ctx.route
        self._rows: list[tuple] = []
        s0 = self.trigger_s
        lane0, pos0 = self.route_lane_at(s0)
        for name, ds in (("front", front), ("behind", -behind)):
            s = s0 + ds
            if s >= 0.0:
                d, blk_lane, blk_pos = self._parking_offset(s, direction)
                p, yaw, left = _route_frame(route, s)
                xy, heading = p[0] + left[0] * d, float(yaw[0])
            else:  # before the route's start: on the lane leading to it
                d, blk_lane, blk_pos = self._parking_offset(0.0, direction)
                lane, pos = upstream(lanes, lane0, pos0, -s)
                x, y, heading = lanes.position_on_lane(lane, pos)
                xy = np.array([x, y]) + d * np.array([-math.sin(heading), math.cos(heading)])
                nb = int(lanes.right[lane] if direction == "right" else lanes.left[lane])
                if blk_lane >= 0 and nb >= 0:  # the side lane of that lane, at the same fraction
                    frac = pos / max(float(lanes.length[lane]), 1e-6)
                    blk_lane, blk_pos = nb, frac * float(lanes.length[nb])
                else:
                    blk_lane = -1
            vid = f"sc_parkexit_{name}_{self.uid}"
            self._rows.append((vid, AgentKind.PARKED_VEHICLE, float(xy[0]), float(xy[1]), heading,
                               CAR_HALF_LENGTH, CAR_HALF_WIDTH, CAR_HEIGHT, 0.0, (90, 90, 110)))
            if blk_lane >= 0:
                self._park_blocker(vid + "_blocker", blk_lane, blk_pos)
        # The car beside the parking spot (scenario-runner's side actor): in the ego lane just ahead.
        self._clear_route(s0 - 10.0, s0 + front + 25.0)
        edges, lane_idx, pos, _ = self.lane_position(s0 + 2 * CAR_HALF_LENGTH + 3.0)
        self.ctx.backend.add_vehicle(self.SIDE, edges, lane_idx, pos + CAR_HALF_LENGTH, speed=0.0,
                                     color=(60, 120, 200))
        self._side_start: np.ndarray | None = None
        self._end_s = s0 + front + 15.0

    def tick(self, scene: Scene) -> None:
        backend = self.ctx.backend
        if self.SIDE in backend.vehicle_ids():
            p = np.asarray(backend.ls.vehicle.getPosition(self.SIDE))
            if self._side_start is None:
                self._side_start = p
            elif np.hypot(*(p - self._side_start)) > self.SIDE_END_DISTANCE:
                self._remove(self.SIDE)
        self.check_timeout(scene, self.ego_s(scene) >= self._end_s, self.TIMEOUT_S, "leave the parking spot")

    def scripted_agents(self) -> Agents:
        return _agent_rows(self._rows)


# ----------------------------------------------------------------------------------- ParkingCutIn
@register_scenario
class ParkingCutIn(_VehicleScenario):
    """A car parked on the side (another one parked behind it) pulls out into the ego lane when the ego
    is 2.35 s or 10 m from it, drives 30 m at up to 13 m/s, then both are removed."""

    type_name = "ParkingCutIn"
    defaults: ClassVar[dict[str, str]] = {"direction": "right"}
    differs_from_carla = ("the parked cars and the cut-in are scripted (smooth 15 m merge, 3.5 m/s^2); SUMO "
                          "traffic is cleared from the ego lane ahead instead of reacting to them")
    key_moment_s = 2.0
    CUT_IN_DISTANCE, BLOCKER_DISTANCE = 35.0, 28.0
    SPEED, REACTION_TIME, MIN_TRIGGER_DIST, END_DISTANCE = 13.0, 2.35, 10.0, 30.0
    MERGE_LENGTH = 15.0
    ADVERSARY, BLOCKER = "sc_parkcutin_adversary", "sc_parkcutin_blocker"
    actor_ids = ("ADVERSARY", "BLOCKER")

    @classmethod
    def candidate_triggers(cls, route: Route, lanes: object) -> np.ndarray:
        s = np.arange(10.0, route.length - 80.0, 5.0)
        if len(s) == 0:
            return np.zeros(0)
        return s[_window_clear(route, _point_internal(route, lanes), s, 0.0, cls.CUT_IN_DISTANCE + 8.0)]

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        return {"direction": {"value": "right"}}

    def setup(self) -> None:
        direction = self._direction()
        route = self.ctx.route
        s_c = self.trigger_s + self.CUT_IN_DISTANCE
        s_b = self.trigger_s + self.BLOCKER_DISTANCE
        if s_c + self.END_DISTANCE + 10.0 > route.length:
            raise self._fail("needs 75 m of route after its trigger")
        d_b, lane_b, pos_b = self._parking_offset(s_b, direction)
        self._d0, lane_c, pos_c = self._parking_offset(s_c, direction)
        p, yaw, left = _route_frame(route, s_b)
        xy = p[0] + left[0] * d_b
        self._blocker_row = (self.BLOCKER, AgentKind.PARKED_VEHICLE, float(xy[0]), float(xy[1]),
                             float(yaw[0]), CAR_HALF_LENGTH, CAR_HALF_WIDTH, CAR_HEIGHT, 0.0, (90, 90, 110))
        if lane_b >= 0:
            self._park_blocker(self.BLOCKER + "_sumo", lane_b, pos_b)
        self._car = _PathCar(self.ADVERSARY, self._parked_path(s_c, self._d0), color=(200, 120, 0))
        self._adv_blocker = lane_c >= 0
        if lane_c >= 0:
            self._park_blocker(self.ADVERSARY + "_sumo", lane_c, pos_c)
        self._s_c = s_c
        self._collision_xy = _route_frame(route, s_c)[0][0]
        self._phase = "parked"

    def on_trigger(self, scene: Scene) -> None:
        self._clear_route(self.ego_s(scene) + 5.0, self._s_c + 10.0)  # LeaveSpaceInFront

    def tick(self, scene: Scene) -> None:
        if self._phase == "parked" and self.status.triggered and self._tta_close(
                scene, self._collision_xy, self.REACTION_TIME, self.MIN_TRIGGER_DIST):
            self._phase = "cut_in"
            if self._adv_blocker:
                self._remove(self.ADVERSARY + "_sumo")
            self._car.set_path(self._offset_path(self._s_c, self._d0, self.MERGE_LENGTH,
                                                 self.END_DISTANCE + 20.0))
            self.status.notes.append("parked car pulls out")
        if self._phase == "cut_in":
            self._car.drive(self.SPEED, scene.dt)
            if self._car.travelled >= self.END_DISTANCE:
                self._phase = "done"
                self._remove(self.BLOCKER + "_sumo")

    def scripted_agents(self) -> Agents:
        if self._phase == "done":
            return Agents()
        return _agent_rows([self._blocker_row, self._car.row()])


# ----------------------------------------------------------------------------------- StaticCutIn
@register_scenario
class StaticCutIn(_VehicleScenario):
    """A queue of stopped vehicles on the side lane `distance` m ahead; when the ego is 2.7 s or 15 m from
    it, the third one cuts in front of the ego (3 s change) and drives 70 m at 60 km/h."""

    type_name = "StaticCutIn"
    defaults: ClassVar[dict[str, str]] = {"distance": "100", "direction": "right"}
    ignored = ("speed",)  # carried by a few training routes; scenario-runner does not read it
    differs_from_carla = ("the cut-in car is scripted (smooth 18 m merge from standstill) and the queue is "
                          "stopped SUMO vehicles; SUMO traffic is cleared from the ego lane ahead")
    key_moment_s = 2.0
    BACK, FRONT, GAP = 2, 3, 11.0
    SPEED, REACTION_TIME, MIN_TRIGGER_DIST, END_DISTANCE = 60.0 / 3.6, 2.7, 15.0, 70.0
    MERGE_LENGTH, IDLE_S = 18.0, 30.0
    ADVERSARY = "sc_staticcutin_adversary"
    actor_ids = ("ADVERSARY",)

    @classmethod
    def candidate_triggers(cls, route: Route, lanes: object) -> np.ndarray:
        s = np.arange(10.0, route.length - 200.0, 5.0)
        if len(s) == 0:
            return np.zeros(0)
        s = s[_window_clear(route, _point_internal(route, lanes), s, 0.0, 45.0 + 6 * cls.GAP + 20.0)]
        ok = []
        for si in s:
            lanes_at = [int(route.lane[min(np.searchsorted(route.cum_length, si + d), len(route.lane) - 1)])
                        for d in np.arange(40.0, 45.0 + 6 * cls.GAP + 1.0, 5.0)]
            ok.append(all(ln >= 0 and lanes.right[ln] >= 0 and lanes.drivable[lanes.right[ln]]
                          and not lanes.is_sidewalk[lanes.right[ln]] for ln in lanes_at))
        return s[np.asarray(ok, np.bool_)] if ok else np.zeros(0)

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        return {"distance": {"value": str(int(rng.integers(40, 46)))}, "direction": {"value": "right"}}

    def setup(self) -> None:
        direction = self._direction()
        distance = self.float_param("distance")
        route = self.ctx.route
        n = self.BACK + 1 + self.FRONT
        s_slots = self.trigger_s + distance + self.GAP * np.arange(n)
        if s_slots[-1] + 20.0 > route.length:
            raise self._fail(f"needs {distance + self.GAP * n + 20:.0f} m of route after its trigger")
        self._queue: list[str] = []
        for k, s in enumerate(s_slots):
            nb, pos, lat, _ = self._side(float(s), direction)
            if nb < 0:
                raise self._fail(f"has no {direction} side lane {s - self.trigger_s:.0f} m after its trigger")
            vid = f"sc_staticcutin_q{k}_{self.uid}"
            if k == self.BACK:
                self._d0, self._s_c = lat, float(s)
                self._car = _PathCar(self.ADVERSARY, self._parked_path(float(s), lat), color=(200, 120, 0))
                vid += "_blocker"
                self._park_blocker(vid, nb, pos)
                self._adv_blocker = vid
            else:
                self._park(vid, nb, pos, kind=AgentKind.VEHICLE)
                self._queue.append(vid)
        self._collision_xy = _route_frame(route, self._s_c)[0][0]
        self._phase = "waiting"
        self._start_tick = 0

    def on_trigger(self, scene: Scene) -> None:
        self._clear_route(self.ego_s(scene) + 5.0, self._s_c + self.GAP * (self.FRONT + 1) + 30.0)

    def tick(self, scene: Scene) -> None:
        if self._phase == "waiting" and self.status.triggered and self._tta_close(
                scene, self._collision_xy, self.REACTION_TIME, self.MIN_TRIGGER_DIST):
            self._phase = "cut_in"
            self._start_tick = scene.tick
            self._remove(self._adv_blocker)
            self._car.set_path(self._offset_path(self._s_c, self._d0, self.MERGE_LENGTH,
                                                 self.MERGE_LENGTH + self.END_DISTANCE))
            self.status.notes.append("queued car cuts in")
        if self._phase == "cut_in":
            self._car.drive(self.SPEED, scene.dt, accel=4.0)
            if self._car.remaining <= 0.0 or (scene.tick - self._start_tick) * scene.dt > self.IDLE_S:
                self._phase = "done"
                for vid in self._queue:
                    self._remove(vid)

    def scripted_agents(self) -> Agents:
        if self._phase == "done":
            return Agents()
        return _agent_rows([self._car.row()])


# ------------------------------------------------------------------------- YieldToEmergencyVehicle
@register_scenario
class YieldToEmergencyVehicle(_VehicleScenario):
    """An emergency vehicle approaches in the ego lane from `distance` m behind the trigger, 25 km/h faster
    than the ego. The scenario ends 10 s after it comes within 50 m of the ego, or once it is in front
    and has driven 50 m; if it is then still behind the ego, the ego failed to yield."""

    type_name = "YieldToEmergencyVehicle"
    defaults: ClassVar[dict[str, str]] = {"distance": "140"}
    differs_from_carla = ("a SUMO emergency vehicle that keeps its lane and follows safely (no bounding-box "
                          "pushing); the criterion is also judged when the route ends, where an ego aside "
                          "in another lane counts as having made way")
    key_moment_s = 6.0
    SPEED_INCREMENT = 25.0 / 3.6
    TRIGGER_DISTANCE, IDLE_S, END_DISTANCE = 50.0, 10.0, 50.0
    EV = "sc_emergency"
    actor_ids = ("EV",)

    @classmethod
    def candidate_triggers(cls, route: Route, lanes: object) -> np.ndarray:
        s = np.arange(30.0, route.length - 120.0, 5.0)
        if len(s) == 0:
            return np.zeros(0)
        s = s[_window_clear(route, _point_internal(route, lanes), s, -20.0, 120.0)]
        idx = np.clip(np.searchsorted(route.cum_length, s), 0, len(route.lane) - 1)
        lane = np.asarray(route.lane)[idx]
        two = (np.asarray(lanes.left)[lane] >= 0) | (np.asarray(lanes.right)[lane] >= 0)
        return s[two]

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        d = rng.integers(26, 31) if rng.random() < 0.5 else rng.integers(110, 151)
        return {"distance": {"value": str(int(d))}}

    def setup(self) -> None:
        if self.float_param("distance") <= 0:
            raise self._fail("distance must be > 0")
        self._phase = "waiting"
        self._near_tick: int | None = None
        self._front_start: np.ndarray | None = None

    def on_trigger(self, scene: Scene) -> None:
        lanes, backend = self.ctx.lanes, self.ctx.backend
        s_ev = self.trigger_s - self.float_param("distance")
        if s_ev >= 0.0:
            edges, lane_idx, pos, _ = self.lane_position(s_ev)
        else:
            lane0, pos0 = self.route_lane_at(0.0)
            lane, pos = upstream(lanes, lane0, pos0, -s_ev)
            edges = self._edges_joining_route(lane, 0.0)
            lane_idx = int(lanes.lane_index[lane])
        self._clear_route(s_ev - 5.0, self.ego_s(scene) + 40.0)  # RemoveRoadLane
        if s_ev < 0.0:
            x, y, _ = lanes.position_on_lane(lane, pos)
            backend.remove_vehicles_near(np.array([[x, y]]), 10.0)
        # Inserted at the highest safe speed ("max"), then driven at ego speed + 25 km/h by `tick`: a fixed
        # departure speed can hold the insertion back for seconds behind traffic on the lane.
        backend.add_vehicle(self.EV, edges, lane_idx, pos, speed="max", vclass="emergency",
                            kind=AgentKind.EMERGENCY, color=(230, 230, 240))
        backend.ls.vehicle.setLaneChangeMode(self.EV, LC_STRATEGIC_ONLY)  # no overtaking
        self._phase = "approach"
        self.status.notes.append(f"emergency vehicle starts {self.float_param('distance'):.0f} m behind")

    BLOCKING_LATERAL = 2.5  # m: an ego ahead of the EV and this close to its line is in its way
    CLEAR_AHEAD = 60.0  # m: background vehicles that enter the EV's lane this close ahead of it are removed

    def ev_behind_ego(self, scene: Scene, in_its_way: bool = False) -> bool | None:
        """Scenario-runner's YieldToEmergencyVehicleTest: the ego lies ahead along the EV's heading
        (`in_its_way`: and within BLOCKING_LATERAL of its line, i.e. not aside in another lane)."""
        backend = self.ctx.backend
        if self.EV not in backend.vehicle_ids():
            return None
        ls = backend.ls
        p = np.asarray(ls.vehicle.getPosition(self.EV))
        yaw = math.radians(90.0 - ls.vehicle.getAngle(self.EV))
        rel = np.array([scene.ego.x, scene.ego.y]) - p
        ahead = rel[0] * math.cos(yaw) + rel[1] * math.sin(yaw) > 0.0
        lateral = abs(-rel[0] * math.sin(yaw) + rel[1] * math.cos(yaw))
        return bool(ahead and (not in_its_way or lateral < self.BLOCKING_LATERAL))

    def tick(self, scene: Scene) -> None:
        if self._phase != "approach":
            return
        backend = self.ctx.backend
        if self.EV not in backend.vehicle_ids():
            return  # not inserted yet
        ls = backend.ls
        ls.vehicle.setSpeed(self.EV, max(scene.ego.speed, 0.0) + self.SPEED_INCREMENT)
        leader = ls.vehicle.getLeader(self.EV, self.CLEAR_AHEAD)
        if leader and leader[0].startswith("bg"):  # RemoveRoadLane keeps the EV's lane free of traffic
            ls.vehicle.remove(leader[0])
        p = np.asarray(ls.vehicle.getPosition(self.EV))
        dist = math.hypot(scene.ego.x - p[0], scene.ego.y - p[1])
        behind = self.ev_behind_ego(scene)
        if self._near_tick is None and dist < self.TRIGGER_DISTANCE:
            self._near_tick = scene.tick
        end = self._near_tick is not None and (scene.tick - self._near_tick) * scene.dt >= self.IDLE_S
        if not behind:
            if self._front_start is None:
                self._front_start = p
            end |= bool(np.hypot(*(p - self._front_start)) >= self.END_DISTANCE)
        route_end = self.ego_s(scene) >= 0.99 * self.ctx.route.length - 0.5
        if route_end and not end:  # cut short: an ego that made way (aside in another lane) yielded
            behind = self.ev_behind_ego(scene, in_its_way=True)
        end |= route_end
        if end:
            self._phase = "done"
            if behind:
                self.ctx.report(InfractionType.YIELD_EMERGENCY_VEHICLE,
                                f"{self.name}: ego failed to yield to the emergency vehicle", scene)
            else:
                self.status.notes.append("ego yielded to the emergency vehicle")
            self._remove(self.EV)


# ------------------------------------------------------------------------------------ HighwayCutIn
@register_scenario
class HighwayCutIn(_VehicleScenario):
    """A vehicle on an on-ramp, timed to arrive 10 m past the merge when the ego does, cuts into the ego
    lane (0.3 s, then a 2 s lane change at 80 % of the ego's speed), drives 3 s more, then is removed."""

    type_name = "HighwayCutIn"
    defaults: ClassVar[dict[str, str]] = {"other_actor_location": ""}
    ignored = ("end_location",)
    differs_from_carla = ("the ramp car is scripted along the ramp's lanes; without other_actor_location it "
                          "starts on the ramp joining the route's next merge")
    key_moment_s = 4.0
    SAME_LANE_S, OTHER_LANE_S, CHANGE_S, SPEED_PERC, CUT_IN_DISTANCE = 0.3, 3.0, 2.0, 0.8, 10.0
    CAR = "sc_highway_cutin"
    actor_ids = ("CAR",)

    @classmethod
    def _merges(cls, route: Route, lanes) -> list[tuple[JunctionPass, int]]:
        out = []
        for jp, others in _ramp_merges(route, lanes, "main"):
            for ln in others:
                outs = [n for v, n in normal_successors(lanes, ln) if v >= 0]
                if any(lanes.left[n] == jp.out_lane or lanes.right[n] == jp.out_lane for n in outs):
                    out.append((jp, ln))
                    break
        return out

    @classmethod
    def candidate_triggers(cls, route: Route, lanes: object) -> np.ndarray:
        out = [np.arange(max(jp.entry_s - 60.0, 5.0), jp.entry_s - 20.0, 5.0)
               for jp, _ in cls._merges(route, lanes) if jp.exit_s + 80.0 < route.length]
        return np.concatenate(out) if out else np.zeros(0)

    def setup(self) -> None:
        lanes, route = self.ctx.lanes, self.ctx.route
        merges = [(jp, ln) for jp, ln in self._merges(route, lanes) if jp.entry_s > self.trigger_s]
        if self.param("other_actor_location"):
            lane, pos = _nearest_normal_lane(lanes, self.location_param("other_actor_location"))
            if lane < 0:
                raise self._fail("other_actor_location is not on a drivable lane")
            jps = [jp for jp in junction_passes(route, lanes) if jp.entry_s > self.trigger_s]
            if not jps:
                raise self._fail("has no junction after its trigger")
            jp = jps[0]
        else:
            if not merges:
                raise self._fail("has no on-ramp joining the route after its trigger")
            jp, lane = merges[0]
            lead = max(jp.entry_s - self.trigger_s - 20.0, 10.0)  # start ~20 m further on than the ego
            lane, pos = upstream(lanes, lane, float(lanes.length[lane]), lead)
        # The ramp car's way: its lane on through the junction onto the lane beside the route.
        path = _lane_chain_polyline(lanes, lane, pos, 400.0)
        self._car = _PathCar(self.CAR, path, color=(200, 120, 0))
        cum = self._car.cum
        # Its target: 10 m past its junction exit (beside the route's junction exit).
        self._target_u = self._path_s_of_exit(path, cum, jp) + self.CUT_IN_DISTANCE
        self._reference_s = jp.exit_s
        self._jp = jp
        self._phase = "waiting"
        self._t = 0.0

    def _path_s_of_exit(self, path: np.ndarray, cum: np.ndarray, jp: JunctionPass) -> float:
        """Arc length along the ramp path of its junction exit (where it comes beside the route's exit)."""
        exit_xy = _route_frame(self.ctx.route, jp.exit_s)[0][0]
        d = np.hypot(path[:, 0] - exit_xy[0], path[:, 1] - exit_xy[1])
        return float(cum[int(np.argmin(d))])

    def on_trigger(self, scene: Scene) -> None:
        self._phase = "sync"
        self.ctx.backend.remove_vehicles_near(self._car.path[:: 4], 2.0)  # HandleJunctionScenario
        self._clear_route(self.ego_s(scene) + 5.0, self._jp.exit_s + 60.0)
        self.status.notes.append("ramp car starts")

    def tick(self, scene: Scene) -> None:
        dt = scene.dt
        ego_v = max(scene.ego.speed, 0.0)
        if self._phase == "sync":  # SyncArrivalWithAgent
            ego_left = self._reference_s - self.ego_s(scene)
            car_left = self._target_u - self._car.u
            if ego_left <= 0.0 or car_left <= 1.0:
                self._phase, self._t = "same_lane", 0.0
            else:
                want = car_left / max(ego_left / max(ego_v, 0.5), 0.05)
                self._car.drive(float(np.clip(want, 0.0, 40.0)), dt, accel=8.0, decel=8.0)
        if self._phase == "same_lane":
            self._car.drive(self.SPEED_PERC * ego_v, dt)
            self._t += dt
            if self._t >= self.SAME_LANE_S:
                self._d0, self._s_car = _project(self.ctx.route, self._car.position())
                self._phase, self._t = "change", 0.0
                self.status.notes.append("ramp car cuts in")
        elif self._phase in ("change", "other_lane"):  # CutIn: a timed lateral move, then keep the lane
            self._car.speed = self.SPEED_PERC * ego_v
            self._s_car += self._car.speed * dt
            self._t += dt
            if self._phase == "change" and self._t >= self.CHANGE_S:
                self._phase, self._t = "other_lane", 0.0
            elif self._phase == "other_lane" and self._t >= self.OTHER_LANE_S:
                self._phase = "done"

    def _lateral(self) -> tuple[float, float]:
        """(offset left of the route, its rate) of the cutting-in car."""
        if self._phase != "change":
            return 0.0, 0.0
        u = self._t / self.CHANGE_S
        rate = -self._d0 * 6.0 * u * (1.0 - u) / self.CHANGE_S
        return float(self._d0 * (1.0 - _smoothstep(u))), rate

    def scripted_agents(self) -> Agents:
        if self._phase in ("waiting", "done"):
            return Agents()
        if self._phase in ("change", "other_lane"):
            d, rate = self._lateral()
            p, yaw, left = _route_frame(self.ctx.route, self._s_car)
            xy = p[0] + left[0] * d
            heading = float(yaw[0]) + math.atan2(rate, max(self._car.speed, 3.0))
            row = (self.CAR, AgentKind.VEHICLE, float(xy[0]), float(xy[1]), heading, CAR_HALF_LENGTH,
                   CAR_HALF_WIDTH, CAR_HEIGHT, self._car.speed, self._car.color)
            return _agent_rows([row])
        return _agent_rows([self._car.row()])


# ------------------------------------------------------------------------------------ Actor flows
class _FlowScenario(_VehicleScenario):
    """A flow of SUMO vehicles from start_actor_flow to end_actor_flow at flow_speed, new ones entering
    at gaps drawn from source_dist_interval (scenario-runner's ActorFlow, with initial actors along the
    way). Without locations the flow runs on the lane the route must get into (see `_derive`)."""

    defaults: ClassVar[dict[str, str]] = {
        "start_actor_flow": "",
        "end_actor_flow": "",
        "flow_speed": "10",
        "source_dist_interval": "20,50",
    }
    TIMEOUT_S = 240.0
    SINK_DISTANCE = 2.0
    SOURCE_BEHIND = 27.0  # Bench2Drive's routes start the flow ~27 m behind the trigger point
    SINK_AHEAD = 150.0
    PREFIX = "sc_flow"
    actor_ids = ("PREFIX",)

    def _derive(self) -> tuple[int, float]:
        """(lane, position) on the flow's lane beside the trigger, for routes without flow locations."""
        raise NotImplementedError

    def setup(self) -> None:
        lanes, backend = self.ctx.lanes, self.ctx.backend
        self._speed = self.float_param("flow_speed")
        self._gaps = self.interval_param("source_dist_interval")
        if self._speed <= 0 or self._gaps[0] <= 0:
            raise self._fail("flow_speed and source_dist_interval must be > 0")
        if self.param("start_actor_flow") and self.param("end_actor_flow"):
            src_lane, src_pos = _nearest_normal_lane(lanes, self.location_param("start_actor_flow"))
            sink_lane, sink_pos = _nearest_normal_lane(lanes, self.location_param("end_actor_flow"))
            if src_lane < 0 or sink_lane < 0:
                raise self._fail("start_actor_flow / end_actor_flow is not on a drivable lane")
        else:
            lane, pos = self._derive()
            src_lane, src_pos = upstream(lanes, lane, pos, self.SOURCE_BEHIND)
            sink_lane, sink_pos = _downstream(lanes, lane, pos, self.SINK_AHEAD)
        src_edge, sink_edge = lanes.edge_of_lane[src_lane], lanes.edge_of_lane[sink_lane]
        edges = [src_edge] if src_edge == sink_edge else list(backend.ls.simulation.findRoute(src_edge,
                                                                                                sink_edge).edges)
        if not edges:
            raise self._fail(f"found no road from the flow's source {src_edge} to its sink {sink_edge}")
        self._edges = edges
        self._src = (src_lane, src_pos)
        self._sink_edge, self._sink_pos = sink_edge, sink_pos
        self._sink_xy = np.array(lanes.position_on_lane(sink_lane, sink_pos)[:2])
        self.flow = ActorFlow(backend, self.PREFIX, edges, int(lanes.lane_index[src_lane]), src_pos,
                              self._speed, self._gaps, self.ctx.rng)
        self._configured: set[str] = set()

    def _initial_actors(self) -> None:
        """Vehicles along the flow's lane from the source to the sink at gaps from the interval."""
        lanes, backend = self.ctx.lanes, self.ctx.backend
        k = 0
        dist = float(self.ctx.rng.uniform(*self._gaps))
        while k < 20:
            ln, p = _downstream(lanes, self._src[0], self._src[1], dist)
            edge = lanes.edge_of_lane[ln]
            if edge not in self._edges or (edge == self._sink_edge and p >= self._sink_pos - 5.0):
                break
            if p >= float(lanes.length[ln]) - 0.5:
                break
            vid = f"{self.PREFIX}_init{k}"
            backend.add_vehicle(vid, self._edges[self._edges.index(edge):], int(lanes.lane_index[ln]),
                                max(p, 5.0), speed=self._speed, max_speed=self._speed)
            self.flow.spawned.insert(0, vid)
            k += 1
            dist += float(self.ctx.rng.uniform(*self._gaps))

    def on_trigger(self, scene: Scene) -> None:
        lanes, backend = self.ctx.lanes, self.ctx.backend
        path = _lane_chain_polyline(lanes, self._src[0], self._src[1], 350.0)
        d = np.hypot(path[:, 0] - self._sink_xy[0], path[:, 1] - self._sink_xy[1])
        backend.remove_vehicles_near(path[: int(np.argmin(d)) + 1: 4], 2.0)  # RemoveRoadLane on the flow
        self._initial_actors()
        self.flow.start()
        self.status.notes.append(f"actor flow at {self._speed:.0f} m/s starts")

    def _passed(self, scene: Scene) -> bool:
        lat, s = _project(self.ctx.route, self._sink_xy)
        ego = np.array([scene.ego.x, scene.ego.y])
        if float(np.hypot(*(ego - self._sink_xy))) < self.SINK_DISTANCE:
            return True
        return abs(lat) < 12.0 and self.ego_s(scene) >= s - self.SINK_DISTANCE

    def tick(self, scene: Scene) -> None:
        if not self.status.triggered:
            return
        backend = self.ctx.backend
        ls = backend.ls
        self.flow.tick()
        for vid in self.flow.alive():
            if vid not in self._configured:
                ls.vehicle.setLaneChangeMode(vid, LC_STRATEGIC_ONLY)
                ls.vehicle.setMaxSpeed(vid, self._speed)
                self._configured.add(vid)
            at_sink = ls.vehicle.getRoadID(vid) == self._sink_edge
            if at_sink and ls.vehicle.getLanePosition(vid) >= self._sink_pos:
                ls.vehicle.remove(vid)  # reached the sink
        passed = self._passed(scene)
        if passed and self.flow.active:
            self.flow.stop()
        self.check_timeout(scene, passed, self.TIMEOUT_S, f"get through {self.type_name}")

    def _route_target_lane(self, after_s: float, last: bool = False, before_s: float = math.inf
                           ) -> tuple[int, float] | None:
        """(lane, position) the route changes into at its first (or `last`) lane change after `after_s`
        (and before `before_s`), moved back to beside the trigger along the lane."""
        changes = [c for c in _lane_changes(self.ctx.route, self.ctx.lanes) if after_s < c[0] < before_s]
        if not changes:
            return None
        s, _a, b = changes[-1] if last else changes[0]
        lanes = self.ctx.lanes
        p = _route_frame(self.ctx.route, s)[0][0]
        pos = next((sl for ln, _d, sl, _y in lanes.nearest_lanes(float(p[0]), float(p[1]), radius=5.0)
                    if ln == b), 0.0)
        return upstream(lanes, b, pos, max(s - self.trigger_s, 0.0))


@register_scenario
class MergerIntoSlowTraffic(_FlowScenario):
    """Merge into a slow, dense flow on the target road (the lane the route merges into)."""

    type_name = "MergerIntoSlowTraffic"
    differs_from_carla = ("the flow is SUMO vehicles capped at flow_speed that leave at the sink; without "
                          "flow locations it runs on the lane the route merges into")
    key_moment_s = 4.0
    PREFIX = "sc_merge_flow"

    @classmethod
    def _merge_changes(cls, route: Route, lanes) -> list[tuple[JunctionPass, float]]:
        """(ramp merge the route comes through, route distance of its first lane change after it)."""
        out = []
        changes = _lane_changes(route, lanes)
        for jp, _others in _ramp_merges(route, lanes, "ramp"):
            after = [c[0] for c in changes if jp.exit_s < c[0] < jp.exit_s + 300.0]
            if after:
                out.append((jp, after[0]))
        return out

    @classmethod
    def candidate_triggers(cls, route: Route, lanes: object) -> np.ndarray:
        out = [np.arange(jp.exit_s + 5.0, s_lc - 5.0, 5.0) for jp, s_lc in cls._merge_changes(route, lanes)]
        out = [o[o + 150.0 < route.length] for o in out]
        return np.concatenate(out) if out else np.zeros(0)

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        lo = int(rng.integers(10, 26))
        return {"flow_speed": {"value": str(int(rng.choice([8, 9, 10, 10, 11, 12, 15])))},
                "source_dist_interval": {"from": str(lo), "to": str(int(rng.integers(lo + 15, 56)))}}

    def _derive(self) -> tuple[int, float]:
        target = self._route_target_lane(self.trigger_s, before_s=self.trigger_s + 300.0)
        if target is None:
            raise self._fail("has no lane change (merge) in the 300 m after its trigger")
        return target


@register_scenario
class MergerIntoSlowTrafficV2(MergerIntoSlowTraffic):
    """Merge into slow traffic on the highway after an on-ramp: the trigger is on the ramp, the flow on
    the main road the ramp joins."""

    type_name = "MergerIntoSlowTrafficV2"
    key_moment_s = 6.0
    PREFIX = "sc_mergev2_flow"

    @classmethod
    def candidate_triggers(cls, route: Route, lanes: object) -> np.ndarray:
        out = [np.arange(max(jp.entry_s - 40.0, 5.0), jp.entry_s - 10.0, 5.0)
               for jp, _ in cls._merge_changes(route, lanes) if jp.exit_s + 150.0 < route.length]
        return np.concatenate(out) if out else np.zeros(0)

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        lo = int(rng.integers(11, 18))
        return {"flow_speed": {"value": "10"},
                "source_dist_interval": {"from": str(lo), "to": str(int(rng.integers(30, 39)))}}


@register_scenario
class HighwayExit(_FlowScenario):
    """Cross a fast flow of vehicles on the exit-side lane to leave the highway; ends when the ego is
    through the exit junction."""

    type_name = "HighwayExit"
    differs_from_carla = ("the flow is SUMO vehicles capped at flow_speed; without flow locations it runs on "
                          "the lane the route takes into the exit")
    key_moment_s = 4.0
    PREFIX = "sc_exit_flow"

    @classmethod
    def _exit_changes(cls, route: Route, lanes) -> list[tuple[JunctionPass, float]]:
        out = []
        changes = _lane_changes(route, lanes)
        for jp in _exits(route, lanes):
            before = [c[0] for c in changes if jp.entry_s - 400.0 < c[0] < jp.entry_s]
            if before:
                out.append((jp, before[0]))
        return out

    @classmethod
    def candidate_triggers(cls, route: Route, lanes: object) -> np.ndarray:
        out = [np.arange(max(s_lc - 80.0, 30.0), s_lc - 10.0, 5.0)
               for _jp, s_lc in cls._exit_changes(route, lanes)]
        return np.concatenate(out) if out else np.zeros(0)

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        lo = int(rng.integers(10, 26))
        return {"flow_speed": {"value": str(int(rng.integers(10, 16)))},
                "source_dist_interval": {"from": str(lo), "to": str(int(rng.integers(max(lo + 10, 25), 51)))}}

    def setup(self) -> None:
        exits = [jp for jp in _exits(self.ctx.route, self.ctx.lanes) if jp.entry_s > self.trigger_s]
        self._exit = exits[0] if exits else None
        super().setup()

    def _derive(self) -> tuple[int, float]:
        if self._exit is None:
            raise self._fail("has no highway exit after its trigger")
        target = self._route_target_lane(self.trigger_s, last=True, before_s=self._exit.entry_s)
        if target is None:  # already on the exit lane: the flow runs on it
            lane, pos = self.route_lane_at(self.trigger_s)
            return lane, pos
        return target

    def _passed(self, scene: Scene) -> bool:
        if self._exit is not None:  # WaitEndIntersection
            return self.ego_s(scene) > self._exit.exit_s
        return super()._passed(scene)


# --------------------------------------------------------------------------- SequentialLaneChange
@register_scenario
class SequentialLaneChange(_VehicleScenario):
    """No actors: the route changes lanes several times; drive 200 m within 240 s."""

    type_name = "SequentialLaneChange"
    defaults: ClassVar[dict[str, str]] = {}
    differs_from_carla = "same as CARLA: no actors, a 200 m / 240 s scenario timeout"
    key_moment_s = 5.0
    END_DISTANCE, TIMEOUT_S = 200.0, 240.0

    @classmethod
    def candidate_triggers(cls, route: Route, lanes: object) -> np.ndarray:
        changes = np.array([c[0] for c in _lane_changes(route, lanes)])
        out = []
        for s in np.arange(5.0, route.length - 50.0, 5.0):
            if np.count_nonzero((changes > s + 10.0) & (changes < s + cls.END_DISTANCE)) >= 2:
                out.append(s)
        return np.array(out)

    def tick(self, scene: Scene) -> None:
        self.check_timeout(scene, self.ego_s(scene) >= self.trigger_s + self.END_DISTANCE, self.TIMEOUT_S,
                           "drive through the lane changes")
