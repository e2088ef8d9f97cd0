"""Infractions, route progress and scores with Bench2Drive (leaderboard 2.0) semantics, backend independent.

`InfractionTracker.update(scene)` is called once per tick with the privileged `Scene`; the SUMO backend
and a CARLA backend share it, so both are scored by the same code. What it checks:

- Route progress: the ego centre is projected onto the dense route (`route.points`) in a forward window
  starting at the last index, so progress is monotonic; completion = progress length / route length.
  Progress only advances while the ego is within `off_route_distance` of the route.
- Collisions: oriented-box overlap of the ego with every agent. Pedestrians -> collisions_pedestrian;
  vehicles, bicycles, emergency and parked vehicles -> collisions_vehicle (CARLA's bicycles and parked
  cars are vehicles); `AgentKind.STATIC` and `AgentKind.CONE` props -> collisions_layout. The same agent
  counts again only after the two have been apart for at least `collision_debounce_s` (1 s). A
  collision record also has `contact`: the side of the ego the other was on, and both speeds.
- Red light: the ego's front-centre point crossing, in the lane's direction, the stop line of a
  signalised link (`scene.lights`) whose state is RED at that tick. When the links of the crossed lane
  disagree (e.g. a protected turn), the via lane is taken from the route, else from the via lane the
  ego enters (nearest after 3 m). A light (tls id) counts once until another light is run, as the
  leaderboard does.
- Stop sign: the front crossing a stop line of `scene.stop_signs` without the ego having been slower
  than 0.1 m/s while its front was within `stop_zone` (4 m) before that line (and at most 0.5 m past).
- Outside route lanes (needs a `LaneGraph`): distance driven while the ego centre is not within half
  a lane width of a drivable lane of roughly its own direction and not inside a junction. Recorded once
  at the end with its share of the completed route. It is NOT applied to the score (leaderboard 2.0
  subtracts it from route completion; this project keeps it as a record only).
- Minimum speed (record only, as Bench2Drive): the route is cut into `speed_checkpoints` (20) equal
  parts of completion; per part, 100 x mean ego speed / mean speed of surrounding traffic (vehicles,
  bicycles, emergency vehicles within `traffic_radius`, over ticks where there is any). A part below 100
  records a min_speed_infraction; the mean over parts (ratios above 1000 % left out, as Bench2Drive's
  script does) is the route's `efficiency`. Parts without traffic are skipped (the leaderboard scores
  them 100).
- Termination: completion >= 99 % -> "Completed" (score_route = 100); > 30 m from the route -> route_dev,
  "Failed - Agent deviated from the route"; < 0.1 m/s for 60 s -> vehicle_blocked, "Failed - Agent got
  blocked"; `max_ticks` simulated ticks after the first update (4000 = 200 s) -> route_timeout,
  "Failed - Agent timed out".
- Scenario criteria (scenario timeouts, failure to yield to an emergency vehicle) are reported by the
  scenarios through `add_scenario_infraction` (signature compatible with `ScenarioContext.report`).

Score (leaderboard 2.0): score_route = completion %, score_penalty = product of penalty ** count,
score_composed = score_route x score_penalty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.signal import savgol_filter

from envs.geometry import (
    as_boxes,
    overlap_mask,
    point_in_polygon,
    polyline_cum_length,
    polyline_frenet,
    project_on_polyline,
    segment_crosses_many,
)
from envs.scene import AgentKind, LightState, Route, Scene

if TYPE_CHECKING:
    from envs.maps.network import LaneGraph


class InfractionType(StrEnum):
    COLLISION_PEDESTRIAN = "collision_pedestrian"
    COLLISION_VEHICLE = "collision_vehicle"
    COLLISION_STATIC = "collision_static"
    RED_LIGHT = "red_light"
    STOP_INFRACTION = "stop_infraction"
    OUTSIDE_ROUTE_LANES = "outside_route_lanes"
    ROUTE_DEV = "route_dev"
    VEHICLE_BLOCKED = "vehicle_blocked"
    ROUTE_TIMEOUT = "route_timeout"
    SCENARIO_TIMEOUT = "scenario_timeout"
    YIELD_EMERGENCY_VEHICLE = "yield_emergency_vehicle_infraction"
    MIN_SPEED = "min_speed_infraction"


# Keys of the leaderboard / Bench2Drive record's "infractions" dict, in the leaderboard's order.
RECORD_KEY: dict[InfractionType, str] = {
    InfractionType.COLLISION_STATIC: "collisions_layout",
    InfractionType.COLLISION_PEDESTRIAN: "collisions_pedestrian",
    InfractionType.COLLISION_VEHICLE: "collisions_vehicle",
    InfractionType.RED_LIGHT: "red_light",
    InfractionType.STOP_INFRACTION: "stop_infraction",
    InfractionType.OUTSIDE_ROUTE_LANES: "outside_route_lanes",
    InfractionType.MIN_SPEED: "min_speed_infractions",
    InfractionType.YIELD_EMERGENCY_VEHICLE: "yield_emergency_vehicle_infractions",
    InfractionType.SCENARIO_TIMEOUT: "scenario_timeouts",
    InfractionType.ROUTE_DEV: "route_dev",
    InfractionType.VEHICLE_BLOCKED: "vehicle_blocked",
    InfractionType.ROUTE_TIMEOUT: "route_timeout",
}
RECORD_KEYS: tuple[str, ...] = tuple(RECORD_KEY.values())

PENALTY: dict[InfractionType, float] = {
    InfractionType.COLLISION_PEDESTRIAN: 0.5,
    InfractionType.COLLISION_VEHICLE: 0.6,
    InfractionType.COLLISION_STATIC: 0.65,
    InfractionType.RED_LIGHT: 0.7,
    InfractionType.STOP_INFRACTION: 0.8,
    InfractionType.SCENARIO_TIMEOUT: 0.7,
    InfractionType.YIELD_EMERGENCY_VEHICLE: 0.7,
}

STATUS_RUNNING = "Running"
STATUS_COMPLETED = "Completed"
STATUS_ROUTE_DEV = "Failed - Agent deviated from the route"
STATUS_BLOCKED = "Failed - Agent got blocked"
STATUS_TIMEOUT = "Failed - Agent timed out"

# Bench2Drive comfort thresholds (nuPlan's), see REFERENCE.md.
COMFORT_LON_ACCEL = (-4.05, 2.40)  # m/s^2
COMFORT_LAT_ACCEL = 4.89  # |m/s^2|
COMFORT_JERK = 8.37  # |m/s^3|
COMFORT_LON_JERK = 4.13  # |m/s^3|
COMFORT_YAW_ACCEL = 1.93  # |rad/s^2|
COMFORT_YAW_RATE = 0.95  # |rad/s|

_TRAFFIC_KINDS = (int(AgentKind.VEHICLE), int(AgentKind.BICYCLE), int(AgentKind.EMERGENCY))
_LINE_MARGIN = 0.25  # m, stop lines are extended by this much on each side for crossing tests


def contact_geometry(ego_box: np.ndarray, ego_speed: float, other_box: np.ndarray, other_velocity: np.ndarray
                     ) -> dict[str, Any]:
    """Who hit whom, which Bench2Drive's records do not tell: the other's centre in the ego frame
    (`forward`, `left`, metres), the side of the ego it lies on (`front` / `rear` where it is more
    ahead / behind than beside, else `left` / `right`), both speeds (m/s) and the other's speed along
    the ego's heading (`other_speed_along`, m/s). A standing ego struck from the rear is
    side == "rear", ego_speed ~ 0."""
    x, y, yaw, hl, hw = (float(v) for v in ego_box[:5])
    c, s = math.cos(yaw), math.sin(yaw)
    dx, dy = float(other_box[0]) - x, float(other_box[1]) - y
    fwd, left = c * dx + s * dy, -s * dx + c * dy
    if abs(fwd) / hl >= abs(left) / hw:
        side = "front" if fwd >= 0 else "rear"
    else:
        side = "left" if left >= 0 else "right"
    vx, vy = float(other_velocity[0]), float(other_velocity[1])
    return {
        "side": side,
        "forward": round(fwd, 2),
        "left": round(left, 2),
        "ego_speed": round(float(ego_speed), 2),
        "other_speed": round(math.hypot(vx, vy), 2),
        "other_speed_along": round(c * vx + s * vy, 2),
    }


def infraction_type(value: InfractionType | str) -> InfractionType:
    """Accept an InfractionType, its value ("scenario_timeout") or its record key ("scenario_timeouts")."""
    if isinstance(value, InfractionType):
        return value
    try:
        return InfractionType(value)
    except ValueError:
        for t, key in RECORD_KEY.items():
            if key == value:
                return t
    known = ", ".join(t.value for t in InfractionType)
    raise ValueError(f"unknown infraction type {value!r}; known types: {known}")


@dataclass
class Infraction:
    type: InfractionType
    tick: int
    time: float
    location: tuple[float, float]  # world frame
    carla_location: tuple[float, float] | None = None  # CARLA frame, when a LaneGraph is known
    other_id: str | None = None
    other_kind: str | None = None  # AgentKind name in lower case, or e.g. "traffic_light"
    message: str = ""
    # Collisions only: where the other was and how both moved at the first contact (see `contact_geometry`).
    contact: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return RECORD_KEY[self.type]

    @property
    def penalty(self) -> float:
        return PENALTY.get(self.type, 1.0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (type, key, tick, time, location, carla_location, other_id/kind, message, and
        `contact` for collisions)."""
        return {
            "type": self.type.value,
            "key": self.key,
            "tick": int(self.tick),
            "time": float(self.time),
            "location": [float(self.location[0]), float(self.location[1])],
            "carla_location": None if self.carla_location is None else [
                float(self.carla_location[0]), float(self.carla_location[1])],
            "other_id": self.other_id,
            "other_kind": self.other_kind,
            "message": self.message,
            **({"contact": self.contact} if self.contact is not None else {}),
        }

    to_dict = as_dict


# Bench2Drive's efficiency script skips checkpoint ratios above 1000 % (traffic standing nearly still).
EFFICIENCY_MAX_RATIO = 1000.0


def _mean_efficiency(values: list[float]) -> float | None:
    kept = [v for v in values if v <= EFFICIENCY_MAX_RATIO]
    return float(np.mean(kept)) if kept else None


def _speed_ratio(ego_sum: float, traffic_sum: float, n: int) -> float | None:
    """100 x mean ego speed / mean traffic speed over n samples; None without samples."""
    if n <= 0:
        return None
    if traffic_sum <= 1e-6:
        return 100.0
    return 100.0 * ego_sum / traffic_sum


class InfractionTracker:
    """Per-route progress, infractions, termination and score (see the module docstring)."""

    def __init__(
        self,
        route: Route,
        lanes: LaneGraph | None = None,
        max_ticks: int = 4000,
        blocked_seconds: float = 60.0,
        off_route_distance: float = 30.0,
        *,
        blocked_speed: float = 0.1,
        collision_debounce_s: float = 1.0,
        stop_zone: float = 4.0,
        stop_speed: float = 0.1,
        completion_threshold: float = 99.0,
        progress_window_m: float = 30.0,
        speed_checkpoints: int = 20,
        traffic_radius: float = 50.0,
        check_lanes: bool = True,
    ):
        if len(route.points) == 0:
            raise ValueError(f"route {route.route_id!r} has no points")
        self.route = route
        self.lanes = lanes
        self.max_ticks = int(max_ticks)
        self.blocked_seconds = float(blocked_seconds)
        self.off_route_distance = float(off_route_distance)
        self.blocked_speed = float(blocked_speed)
        self.collision_debounce_s = float(collision_debounce_s)
        self.stop_zone = float(stop_zone)
        self.stop_speed = float(stop_speed)
        self.completion_threshold = float(completion_threshold)
        self.window = max(2, round(progress_window_m * Route.POINTS_PER_METER))
        self.speed_checkpoints = int(speed_checkpoints)
        self.traffic_radius = float(traffic_radius)
        self.check_lanes = bool(check_lanes)
        self._points = np.ascontiguousarray(route.points, dtype=np.float64)
        self._cum = np.ascontiguousarray(route.cum_length, dtype=np.float64)

        self.infractions: list[Infraction] = []
        self.ticks = 0  # simulated ticks since the first update (the first Scene is tick 0 of the route)
        self.updates = 0
        self._first_tick: int | None = None
        self.route_index = 0
        self.route_distance = 0.0  # ego's distance from the route at the last update
        self.distance_driven = 0.0
        self.outside_lanes_distance = 0.0
        self.checkpoint_values: list[float] = []
        self._status = STATUS_RUNNING
        self._done = False
        self._dt = 0.05
        self._tick = 0
        self._time = 0.0
        self._xy: tuple[float, float] | None = None
        self._prev_front: np.ndarray | None = None
        self._contact_last: dict[str, float] = {}
        self._last_red_tls: str | None = None
        self._pending_red: dict[str, Any] | None = None
        self._stopped_lanes: set[int] = set()
        self._blocked_since: float | None = None
        self._cp_done = 0
        self._cp_ego = 0.0
        self._cp_traffic = 0.0
        self._cp_n = 0
        self._lane_dirs: dict[int, np.ndarray | None] = {}
        self._dirs_cache: dict[Any, tuple] = {}
        self._junction_bbox = np.zeros((0, 4))
        self._lane_radius = 2.5
        if lanes is not None:
            self._index_lanes(lanes)

    # ------------------------------------------------------------------------------- properties
    @property
    def done(self) -> bool:
        return self._done

    @property
    def status(self) -> str:
        return self._status

    @property
    def completion(self) -> float:
        """Route completion in percent (0..100), monotonic."""
        length = self.route.length
        if length <= 0.0:
            return 100.0
        return float(min(100.0, 100.0 * self._cum[self.route_index] / length))

    @property
    def score_route(self) -> float:
        return 100.0 if self._status == STATUS_COMPLETED else self.completion

    @property
    def score_penalty(self) -> float:
        p = 1.0
        for inf in self.infractions:
            p *= inf.penalty
        return p

    @property
    def score(self) -> float:
        """score_composed = score_route x score_penalty."""
        return max(0.0, self.score_route * self.score_penalty)

    @property
    def timed_out(self) -> bool:
        """True when the route ended on the tick cap (a truncation rather than a failure of the agent)."""
        return self._status == STATUS_TIMEOUT

    @property
    def infraction_count(self) -> int:
        """Infractions so far, min-speed records aside."""
        return sum(1 for inf in self.infractions if inf.type != InfractionType.MIN_SPEED)

    @property
    def efficiency(self) -> float | None:
        return _mean_efficiency(self.checkpoint_values)

    def count(self, kind: InfractionType | str) -> int:
        t = infraction_type(kind)
        return sum(1 for inf in self.infractions if inf.type == t)

    # ---------------------------------------------------------------------------------- update
    def update(self, scene: Scene) -> list[Infraction]:
        """Advance by one tick; returns the infractions raised at this tick (empty once done)."""
        if self._done:
            return []
        new: list[Infraction] = []
        self.updates += 1
        self._tick, self._time, self._dt = int(scene.tick), float(scene.time), float(scene.dt)
        if self._first_tick is None:
            self._first_tick = self._tick
        self.ticks = self._tick - self._first_tick
        ego = scene.ego
        lanes = self.lanes if self.lanes is not None else _lane_graph_or_none(scene.lanes)
        if lanes is not None and self.lanes is None:
            self.lanes = lanes
            self._index_lanes(lanes)

        step = 0.0 if self._xy is None else math.hypot(ego.x - self._xy[0], ego.y - self._xy[1])
        self.distance_driven += step
        self._xy = (float(ego.x), float(ego.y))

        # Route progress (monotonic, windowed).
        idx, _, lat = polyline_frenet(self._points, self._cum, float(ego.x), float(ego.y),
                                      self.route_index, self.window)
        self.route_distance = abs(float(lat))
        if self.route_distance <= self.off_route_distance and idx > self.route_index:
            self.route_index = int(idx)

        new += self._check_collisions(scene)
        front = np.array([ego.x + ego.half_length * math.cos(ego.yaw),
                          ego.y + ego.half_length * math.sin(ego.yaw)])
        self._update_stop_zones(scene, front)
        if self._prev_front is not None:
            new += self._check_red_lights(scene, self._prev_front, front)
            new += self._check_stop_signs(scene, self._prev_front, front)
        new += self._resolve_pending_red(scene, front)
        self._prev_front = front

        if self.check_lanes and lanes is not None and step > 0.0 and self._is_outside_lanes(lanes, ego):
            self.outside_lanes_distance += step

        new += self._update_speed_checkpoints(scene)

        # Termination.
        x, y = float(ego.x), float(ego.y)
        if ego.speed < self.blocked_speed:
            if self._blocked_since is None:
                self._blocked_since = self._time
        else:
            self._blocked_since = None
        if self.completion >= self.completion_threshold:
            new += self._finish(STATUS_COMPLETED)
        elif self.route_distance > self.off_route_distance:
            new.append(self._add(InfractionType.ROUTE_DEV, x, y,
                                 message=f"Agent deviated from the route at {self._at(x, y)}"))
            new += self._finish(STATUS_ROUTE_DEV)
        elif (self._blocked_since is not None
              and self._time - self._blocked_since >= self.blocked_seconds - 1e-9):
            new.append(self._add(InfractionType.VEHICLE_BLOCKED, x, y,
                                 message=f"Agent got blocked at {self._at(x, y)}"))
            new += self._finish(STATUS_BLOCKED)
        elif self.ticks >= self.max_ticks:
            new.append(self._add(InfractionType.ROUTE_TIMEOUT, x, y, message="Route timeout."))
            new += self._finish(STATUS_TIMEOUT)
        return new

    def terminate(self, status: str) -> list[Infraction]:
        """End the route from outside (e.g. "Failed - Simulation crashed"); no-op once done."""
        if self._done:
            return []
        return self._finish(status)

    def add_scenario_infraction(
        self,
        kind: InfractionType | str,
        message: str = "",
        scene: Scene | None = None,
        location: tuple[float, float] | None = None,
        other_id: str | None = None,
        other_kind: str | None = None,
    ) -> Infraction:
        """Record a scenario criterion (scenario_timeout, yield_emergency_vehicle_infraction, ...).

        Called as `report(type, message, scene)` by the scenarios. The location defaults to the ego's.
        """
        t = infraction_type(kind)
        if scene is not None:
            self._tick, self._time = int(scene.tick), float(scene.time)
            if location is None:
                location = (float(scene.ego.x), float(scene.ego.y))
        if location is None:
            location = self._xy if self._xy is not None else self._route_start()
        x, y = float(location[0]), float(location[1])
        msg = message or f"{t.value} at {self._at(x, y)}"
        return self._add(t, x, y, other_id=other_id, other_kind=other_kind, message=msg)

    # --------------------------------------------------------------------------------- records
    def record(self) -> dict[str, Any]:
        """Bench2Drive / leaderboard-like JSON-able record of this route."""
        infractions: dict[str, list[str]] = {key: [] for key in RECORD_KEYS}
        for inf in self.infractions:
            infractions[inf.key].append(inf.message)
        eff = self.efficiency
        return {
            "route_id": self.route.route_id,
            "status": self._status,
            "num_infractions": len(self.infractions),
            "infractions": infractions,
            "infraction_details": [inf.as_dict() for inf in self.infractions],
            "scores": {
                "score_route": float(self.score_route),
                "score_penalty": float(self.score_penalty),
                "score_composed": float(self.score),
            },
            "meta": {
                "route_length": float(self.route.length),
                "duration_game": float(self.ticks * self._dt),
                "ticks": int(self.ticks),
                "town": self.route.town,
                "route_completion": float(self.completion),
                "distance_driven": float(self.distance_driven),
                "outside_lanes_distance": float(self.outside_lanes_distance),
                "junction_completion": self._junction_completion(),
            },
            "efficiency": None if eff is None else float(eff),
            "min_speed_checkpoints": [float(v) for v in self.checkpoint_values],
        }

    def _junction_completion(self) -> float | None:
        if not hasattr(self, "_junction_completion_cache"):
            self._junction_completion_cache = (
                None if self.lanes is None else first_junction_completion(self.route, self.lanes)
            )
        return self._junction_completion_cache

    # -------------------------------------------------------------------------------- internals
    def _index_lanes(self, lanes: LaneGraph) -> None:
        if lanes.junction_polygons:
            self._junction_bbox = np.array(
                [[p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()] if len(p) else
                 [np.inf, np.inf, -np.inf, -np.inf] for p in lanes.junction_polygons])
        drivable = np.asarray(lanes.drivable, dtype=bool)
        if drivable.any():
            self._lane_radius = float(0.5 * np.max(np.asarray(lanes.width)[drivable]) + 0.5)

    def _route_start(self) -> tuple[float, float]:
        return float(self._points[0, 0]), float(self._points[0, 1])

    def _location(self, x: float, y: float) -> tuple[tuple[float, float], tuple[float, float] | None]:
        carla = None
        if self.lanes is not None:
            c = self.lanes.world_to_carla(np.array([x, y], dtype=np.float64))
            carla = (float(c[0]), float(c[1]))
        return (float(x), float(y)), carla

    def _at(self, x: float, y: float) -> str:
        """Location text for messages: CARLA coordinates when a LaneGraph is known, else world."""
        world, carla = self._location(x, y)
        px, py = carla if carla is not None else world
        return f"(x={px:.3f}, y={py:.3f}, z=0.000)"

    def _add(
        self, t: InfractionType, x: float, y: float, *, other_id: str | None = None,
        other_kind: str | None = None, message: str = "", contact: dict[str, Any] | None = None,
    ) -> Infraction:
        world, carla = self._location(x, y)
        inf = Infraction(t, self._tick, self._time, world, carla, other_id, other_kind, message, contact)
        self.infractions.append(inf)
        return inf

    def _finish(self, status: str) -> list[Infraction]:
        new: list[Infraction] = []
        x, y = self._xy if self._xy is not None else self._route_start()
        # Flush the partial minimum-speed checkpoint.
        value = _speed_ratio(self._cp_ego, self._cp_traffic, self._cp_n)
        if value is not None and self._cp_done < self.speed_checkpoints:
            new += self._checkpoint(value, x, y)
        self._cp_ego = self._cp_traffic = 0.0
        self._cp_n = 0
        if self.outside_lanes_distance > 0.0:
            done_m = max(float(self._cum[self.route_index]), 1e-6)
            pct = 100.0 * self.outside_lanes_distance / done_m
            new.append(self._add(
                InfractionType.OUTSIDE_ROUTE_LANES, x, y,
                message=f"Agent went outside its route lanes for about {self.outside_lanes_distance:.3f} "
                        f"meters, {pct:.2f}% of the completed route"))
        self._done = True
        self._status = status
        return new

    def _check_collisions(self, scene: Scene) -> list[Infraction]:
        agents = scene.agents
        if len(agents) == 0:
            return []
        ego = scene.ego
        hits = np.flatnonzero(overlap_mask(np.asarray(ego.box(), dtype=np.float64), as_boxes(agents.box)))
        out: list[Infraction] = []
        for i in hits:
            aid = agents.ids[i]
            last = self._contact_last.get(aid)
            self._contact_last[aid] = self._time
            if last is not None and (self._time - last) - self._dt < self.collision_debounce_s - 1e-9:
                continue  # still the same contact (not apart for a full debounce interval)
            try:
                kind = AgentKind(int(agents.kind[i]))
            except ValueError:
                kind = AgentKind.VEHICLE  # an unknown kind is scored as a vehicle, as CARLA's actors would
            if kind == AgentKind.PEDESTRIAN:
                t = InfractionType.COLLISION_PEDESTRIAN
            elif kind in (AgentKind.STATIC, AgentKind.CONE):
                t = InfractionType.COLLISION_STATIC
            else:
                t = InfractionType.COLLISION_VEHICLE
            name = kind.name.lower()
            out.append(self._add(
                t, float(ego.x), float(ego.y), other_id=aid, other_kind=name,
                message=f"Agent collided against object with type={name} and id={aid} "
                        f"at {self._at(float(ego.x), float(ego.y))}",
                contact=contact_geometry(ego.box(), ego.speed, agents.box[i], agents.velocity[i])))
        return out

    def _lane_dir(self, lane: int) -> np.ndarray | None:
        """Unit direction of a lane at its end (where its stop line is); None without a LaneGraph."""
        if lane in self._lane_dirs:
            return self._lane_dirs[lane]
        d = None
        if self.lanes is not None and 0 <= lane < len(self.lanes.lane_ids):
            pl = self.lanes.polyline(lane)
            if len(pl) >= 2:
                v = pl[-1] - pl[-2]
                n = float(np.hypot(v[0], v[1]))
                if n > 0:
                    d = v / n
        self._lane_dirs[lane] = d
        return d

    def _all_line_dirs(self, lines: np.ndarray, lanes_of_rows: np.ndarray) -> np.ndarray:
        """`_line_dirs` for a whole (static) stop-line table, cached while the same array is passed."""
        cache = self._dirs_cache.get(id(lines))
        if cache is not None and cache[0] is lines and cache[1] is lanes_of_rows:
            return cache[2]
        dirs = self._line_dirs(np.asarray(lines, dtype=np.float64), np.asarray(lanes_of_rows))
        self._dirs_cache[id(lines)] = (lines, lanes_of_rows, dirs)
        return dirs

    def _line_dirs(self, lines: np.ndarray, lanes_of_rows: np.ndarray) -> np.ndarray:
        """Driving direction across each stop line (N, 2): the lane's end direction, else the normal
        of the line assuming its endpoints run from the right to the left side of the lane."""
        out = np.empty((len(lines), 2))
        for i in range(len(lines)):
            d = self._lane_dir(int(lanes_of_rows[i]))
            if d is None:
                v = lines[i, 1] - lines[i, 0]
                n = float(np.hypot(v[0], v[1])) or 1.0
                d = np.array([v[1], -v[0]]) / n
            out[i] = d
        return out

    def _extended_lines(self, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stop-line endpoints lengthened by _LINE_MARGIN each side, and centres; cached per array."""
        key = ("ext", id(lines))
        cache = self._dirs_cache.get(key)
        if cache is not None and cache[0] is lines:
            return cache[1]
        arr = np.asarray(lines, dtype=np.float64)
        v = arr[:, 1] - arr[:, 0]
        n = np.hypot(v[:, 0], v[:, 1])[:, None]
        u = np.divide(v, n, out=np.zeros_like(v), where=n > 0)
        a = np.ascontiguousarray(arr[:, 0] - u * _LINE_MARGIN)
        b = np.ascontiguousarray(arr[:, 1] + u * _LINE_MARGIN)
        out = (a, b, arr.mean(axis=1))
        self._dirs_cache[key] = (lines, out)
        return out

    def _crossed_lines(
        self, lines: np.ndarray, lanes_of_rows: np.ndarray, p0: np.ndarray, p1: np.ndarray
    ) -> np.ndarray:
        """Rows whose stop line the front crossed forward this tick, restricted to the single lane
        whose line centre is nearest to the motion (adjacent lines share endpoints)."""
        move = p1 - p0
        if not np.any(move) or len(lines) == 0:
            return np.zeros(0, np.int64)
        a, b, centres = self._extended_lines(lines)
        hits = np.flatnonzero(segment_crosses_many(p0, p1, a, b))
        if len(hits) == 0:
            return hits
        lanes_of_rows = np.asarray(lanes_of_rows)
        dirs = self._line_dirs(np.asarray(lines, dtype=np.float64)[hits], lanes_of_rows[hits])
        hits = hits[dirs @ move > 0.0]
        if len(hits) == 0:
            return hits
        mid = 0.5 * (p0 + p1)
        best = hits[int(np.argmin(np.hypot(*(centres[hits] - mid).T)))]
        return hits[lanes_of_rows[hits] == lanes_of_rows[best]]

    def _check_red_lights(self, scene: Scene, p0: np.ndarray, p1: np.ndarray) -> list[Infraction]:
        lights = scene.lights
        if len(lights) == 0:
            return []
        rows = self._crossed_lines(lights.stop_line, np.asarray(lights.from_lane), p0, p1)
        if len(rows) == 0:
            return []
        red = np.asarray(lights.state)[rows] == int(LightState.RED)
        if not red.any():
            return []
        if red.all():
            return self._red_infraction(scene, int(rows[0]))
        # Mixed states on the crossed lane: which link does the ego take?
        via = np.asarray(lights.via_lane)[rows]
        ahead = set(int(v) for v in self.route.lane[self.route_index: self.route_index + 2 * self.window])
        on_route = [int(r) for r, v in zip(rows, via, strict=True) if int(v) in ahead]
        if on_route:
            r = on_route[0]
            return self._red_infraction(scene, r) if int(lights.state[r]) == int(LightState.RED) else []
        if self.lanes is None:
            return self._red_infraction(scene, int(rows[red][0]))  # unknown path: count the red link
        self._pending_red = {"rows": [int(r) for r in rows], "red": [bool(v) for v in red],
                             "via": [int(v) for v in via], "front": p1.copy(), "tick": self.updates,
                             "tls": [str(lights.tls_id[int(r)]) for r in rows],
                             "pos": [np.asarray(lights.position[int(r)], dtype=np.float64) for r in rows]}
        return []

    def _resolve_pending_red(self, scene: Scene, front: np.ndarray) -> list[Infraction]:
        p = self._pending_red
        if p is None or self.lanes is None:
            return []
        if float(np.hypot(*(front - p["front"]))) < 3.0 and self.updates - p["tick"] < 60:
            return []
        self._pending_red = None
        dists = []
        for v in p["via"]:
            pl = np.ascontiguousarray(self.lanes.polyline(v), dtype=np.float64)
            if len(pl) == 0:
                dists.append(np.inf)
                continue
            cum = polyline_cum_length(pl)
            _, d = project_on_polyline(pl, cum, float(front[0]), float(front[1]), 0, len(pl))
            dists.append(float(d))
        k = int(np.argmin(dists))
        if not p["red"][k]:
            return []
        return self._emit_red(p["tls"][k], p["pos"][k])

    def _red_infraction(self, scene: Scene, row: int) -> list[Infraction]:
        lights = scene.lights
        return self._emit_red(str(lights.tls_id[row]), np.asarray(lights.position[row], dtype=np.float64))

    def _emit_red(self, tls: str, pos: np.ndarray) -> list[Infraction]:
        if tls == self._last_red_tls:
            return []
        self._last_red_tls = tls
        x, y = float(pos[0]), float(pos[1])
        return [self._add(InfractionType.RED_LIGHT, x, y, other_id=tls, other_kind="traffic_light",
                          message=f"Agent ran a red light {tls} at {self._at(x, y)}")]

    def _update_stop_zones(self, scene: Scene, front: np.ndarray) -> None:
        stops = scene.stop_signs
        ego = scene.ego
        if len(stops) == 0 or ego.speed >= self.stop_speed:
            return
        lines = np.asarray(stops.stop_line, dtype=np.float64)
        lane_rows = np.asarray(stops.lane)
        dirs = self._all_line_dirs(stops.stop_line, stops.lane)
        mid = lines.mean(axis=1)
        half = 0.5 * np.hypot(*(lines[:, 1] - lines[:, 0]).T)
        rel = front[None, :] - mid
        s = np.einsum("ij,ij->i", rel, dirs)
        lat = np.abs(rel[:, 0] * -dirs[:, 1] + rel[:, 1] * dirs[:, 0])
        heading_ok = dirs @ np.array([math.cos(ego.yaw), math.sin(ego.yaw)]) > 0.5
        zone = (s >= -self.stop_zone) & (s <= 0.5) & (lat <= half + 0.5) & heading_ok
        for i in np.flatnonzero(zone):
            self._stopped_lanes.add(int(lane_rows[i]))

    def _check_stop_signs(self, scene: Scene, p0: np.ndarray, p1: np.ndarray) -> list[Infraction]:
        stops = scene.stop_signs
        if len(stops) == 0:
            return []
        lane_rows = np.asarray(stops.lane)
        rows = self._crossed_lines(stops.stop_line, lane_rows, p0, p1)
        if len(rows) == 0:
            return []
        row = int(rows[0])
        lane = int(lane_rows[row])
        if lane in self._stopped_lanes:
            self._stopped_lanes.discard(lane)
            return []
        x, y = (float(v) for v in stops.position[row])
        known = self.lanes is not None and 0 <= lane < len(self.lanes)
        name = f"stop:{self.lanes.lane_ids[lane] if known else lane}"
        return [self._add(InfractionType.STOP_INFRACTION, x, y, other_id=name, other_kind="stop_sign",
                          message=f"Agent ran a stop with id={name} at {self._at(x, y)}")]

    def _is_outside_lanes(self, lanes: LaneGraph, ego: Any) -> bool:
        x, y = float(ego.x), float(ego.y)
        for lane, dist, _, _ in lanes.nearest_lanes(x, y, radius=self._lane_radius, yaw=float(ego.yaw)):
            if dist <= 0.5 * float(lanes.width[lane]):
                return False
        bb = self._junction_bbox
        if len(bb):
            near = np.flatnonzero((bb[:, 0] <= x) & (x <= bb[:, 2]) & (bb[:, 1] <= y) & (y <= bb[:, 3]))
            for j in near:
                if point_in_polygon(x, y, np.asarray(lanes.junction_polygons[j], dtype=np.float64)):
                    return False
        return True

    def _update_speed_checkpoints(self, scene: Scene) -> list[Infraction]:
        if self.speed_checkpoints <= 0:
            return []
        agents, ego = scene.agents, scene.ego
        if len(agents):
            kinds = np.asarray(agents.kind)
            box = np.asarray(agents.box, dtype=np.float64)
            k0, k1, k2 = _TRAFFIC_KINDS
            vehicle_like = (kinds == k0) | (kinds == k1) | (kinds == k2)
            near = vehicle_like & (np.hypot(box[:, 0] - ego.x, box[:, 1] - ego.y) <= self.traffic_radius)
            if near.any():
                self._cp_ego += float(ego.speed)
                self._cp_traffic += float(np.mean(np.asarray(agents.speed)[near]))
                self._cp_n += 1
        out: list[Infraction] = []
        while (self._cp_done < self.speed_checkpoints
               and self.completion >= 100.0 * (self._cp_done + 1) / self.speed_checkpoints - 1e-9):
            value = _speed_ratio(self._cp_ego, self._cp_traffic, self._cp_n)
            self._cp_ego = self._cp_traffic = 0.0
            self._cp_n = 0
            if value is not None:
                out += self._checkpoint(value, float(ego.x), float(ego.y))
            self._cp_done += 1
        return out

    def _checkpoint(self, value: float, x: float, y: float) -> list[Infraction]:
        self.checkpoint_values.append(float(value))
        if value >= 100.0:
            return []
        return [self._add(InfractionType.MIN_SPEED, x, y,
                          message=f"Average agent speed is {value:.2f}% of the surrounding traffic's one "
                                  f"at {self._at(x, y)}")]


def _lane_graph_or_none(obj: object) -> LaneGraph | None:
    """scene.lanes when it looks like a LaneGraph (the Scene types it loosely)."""
    if obj is not None and hasattr(obj, "nearest_lanes") and hasattr(obj, "world_to_carla"):
        return obj  # type: ignore[return-value]
    return None


# ----------------------------------------------------------------------------------- summaries


def is_success(record: dict) -> bool:
    """Bench2Drive success: status Completed and no infraction other than min-speed records."""
    if record.get("status") != STATUS_COMPLETED:
        return False
    infractions = record.get("infractions", {}) or {}
    return all(not v for k, v in infractions.items() if k != "min_speed_infractions")


JUNCTION_MARGIN_M = 8.0  # Bench2Drive: first junction waypoint + 8 (1 m apart) "to pass the trigger volume"


def first_junction_completion(route: Route, lanes: LaneGraph) -> float | None:
    """Route completion (%) past which the ego has driven through the route's first junction (a junction
    pass where other roads come in from the left or right, not a mere road joint), plus
    `JUNCTION_MARGIN_M`: Bench2Drive's Traffic Signs rule. None when the route crosses no junction."""
    from envs.scenarios.placement import junction_approaches, junction_passes

    if route.length <= 0.0:
        return None
    for jp in junction_passes(route, lanes):
        if any(a.relation in ("from_left", "from_right") for a in junction_approaches(lanes, jp)):
            return min(100.0, 100.0 * (jp.entry_s + JUNCTION_MARGIN_M) / route.length)
    return None


def _record_types(rec: dict) -> list[str]:
    """Implemented scenario types a record ran (each once); unimplemented ones did not happen."""
    out: list[str] = []
    for sc in rec.get("scenarios") or []:
        t = sc.get("type") if isinstance(sc, dict) else None
        if t and sc.get("implemented", True) and t not in out:
            out.append(str(t))
    return out


def traffic_signs_success(record: dict) -> bool:
    """Bench2Drive's Traffic Signs outcome of a route: completion beyond the first junction (the record's
    meta "junction_completion") without red-light or stop infractions; `is_success` when the record
    does not carry the junction position."""
    jc = (record.get("meta") or {}).get("junction_completion")
    if jc is None:
        return is_success(record)
    infractions = record.get("infractions", {}) or {}
    completion = float((record.get("scores") or {}).get("score_route", 0.0))
    ran_rules = bool(infractions.get("red_light")) or bool(infractions.get("stop_infraction"))
    return completion > float(jc) and not ran_rules


def ability_scores(records: list[dict]) -> dict[str, Any]:
    """Bench2Drive ability scores from route records carrying scenario types (record["scenarios"]).

    A route counts once towards every ability of the (implemented) scenario types it ran, as a success
    when `is_success`; for Traffic Signs the success is `traffic_signs_success`. Returns percentages per
    ability (None for an ability no route exercised), their mean over the exercised abilities, the
    (successes, routes) counts, and per scenario type its success rate and counts. Empty when no record
    carries scenario types."""
    from envs.scenarios.catalog import ABILITIES, TRAFFIC_SIGNS, abilities_of

    counts = {a: [0, 0] for a in ABILITIES}
    per_type: dict[str, list[int]] = {}
    seen = False
    for rec in records:
        types = _record_types(rec)
        if not types:
            continue
        seen = True
        ok = is_success(rec)
        abilities = {a for t in types for a in abilities_of(t)}
        for a in abilities:
            hit = traffic_signs_success(rec) if a == TRAFFIC_SIGNS else ok
            counts[a][0] += int(hit)
            counts[a][1] += 1
        for t in types:
            c = per_type.setdefault(t, [0, 0])
            c[0] += int(ok)
            c[1] += 1
    if not seen:
        return {}
    rates: dict[str, float | None] = {a: (100.0 * k / n if n else None) for a, (k, n) in counts.items()}
    present = [v for v in rates.values() if v is not None]
    rates["mean"] = float(np.mean(present)) if present else None
    return {
        "abilities": rates,
        "ability_counts": {a: list(c) for a, c in counts.items()},
        "scenario_success": {t: 100.0 * k / n for t, (k, n) in sorted(per_type.items())},
        "scenario_counts": {t: list(c) for t, c in sorted(per_type.items())},
    }


def summarize(records: list[dict], total_routes: int | None = None) -> dict[str, Any]:
    """Aggregate route records into Bench2Drive-style global numbers.

    driving_score and success_rate (percent) divide by `total_routes` (default: len(records)), so
    missing routes count 0. route_completion and infraction_penalty are means over the given records;
    infractions_per_km divides counts by the km driven (route length x completion, summed). When records
    carry scenario types, Bench2Drive's ability scores are added (`ability_scores`: "abilities",
    "ability_counts", "scenario_success", "scenario_counts"). `collision_contacts` counts the collisions
    by the side of the ego the other was on (records written before contacts were kept count nowhere)
    and those where a standing ego was struck from behind or the side.
    """
    n = len(records) if total_routes is None else int(total_routes)
    if n < len(records):
        raise ValueError(f"total_routes={n} is smaller than the number of records ({len(records)})")
    counts = {key: 0 for key in RECORD_KEYS}
    status_counts: dict[str, int] = {}
    composed = completion = penalty = km = 0.0
    successes = 0
    effs, comforts = [], []
    contacts = {side: 0 for side in ("front", "rear", "left", "right")}
    contacts["struck_standing"] = 0
    for rec in records:
        for detail in rec.get("infraction_details") or ():
            contact = detail.get("contact")
            if contact and contact.get("side") in contacts:
                contacts[contact["side"]] += 1
                standing = contact.get("ego_speed", 1.0) < 0.5
                contacts["struck_standing"] += standing and contact["side"] != "front"
        scores = rec.get("scores", {})
        composed += float(scores.get("score_composed", 0.0))
        completion += float(scores.get("score_route", 0.0))
        penalty += float(scores.get("score_penalty", 1.0))
        length_km = float((rec.get("meta") or {}).get("route_length", 0.0)) / 1000.0
        km += length_km * float(scores.get("score_route", 0.0)) / 100.0
        for key, msgs in (rec.get("infractions") or {}).items():
            counts[key] = counts.get(key, 0) + len(msgs)
        status = str(rec.get("status", ""))
        status_counts[status] = status_counts.get(status, 0) + 1
        successes += is_success(rec)
        if rec.get("efficiency") is not None:
            effs.append(float(rec["efficiency"]))
        if rec.get("comfort") is not None:
            comforts.append(float(rec["comfort"]))
    m = max(len(records), 1)
    km_div = max(km, 1e-3)
    return {
        "num_routes": n,
        "num_records": len(records),
        "driving_score": composed / n if n else 0.0,
        "success_rate": 100.0 * successes / n if n else 0.0,
        "num_success": successes,
        "route_completion": completion / m if records else 0.0,
        "infraction_penalty": penalty / m if records else 0.0,
        "km_driven": km,
        "infraction_counts": counts,
        # Collisions by the side of the ego the other was on; struck_standing: not ahead, ego < 0.5 m/s.
        "collision_contacts": contacts,
        "infractions_per_km": {k: v / km_div for k, v in counts.items()},
        "status_counts": status_counts,
        "efficiency": float(np.mean(effs)) if effs else None,
        "comfort": float(np.mean(comforts)) if comforts else None,
        **ability_scores(records),
    }


# -------------------------------------------------------------------- trajectory metrics (B2D)


def comfort_fraction(
    x: np.ndarray, y: np.ndarray, yaw: np.ndarray, dt: float = 0.05, segment: int = 20,
    speed: np.ndarray | None = None, window: int = 7, order: int = 2,
) -> float:
    """Share (0..1) of `segment`-frame pieces of a logged ego trajectory within the comfort limits.

    Per piece, Savitzky-Golay derivatives (window 7, order 2) give the longitudinal speed (from
    positions projected on the heading, unless `speed` is given), longitudinal acceleration and jerk,
    lateral acceleration (v x yaw rate), jerk magnitude, yaw rate and yaw acceleration; a piece is
    comfortable when every frame is inside the thresholds. Pieces shorter than the window are
    dropped; NaN when no piece remains.
    """
    x, y, yaw = (np.asarray(a, dtype=np.float64) for a in (x, y, yaw))
    v_all = None if speed is None else np.asarray(speed, dtype=np.float64)
    if not (len(x) == len(y) == len(yaw)) or (speed is not None and len(speed) != len(x)):
        raise ValueError("comfort_fraction: x, y, yaw (and speed) must have the same length")
    ok = 0
    total = 0
    for start in range(0, len(x), segment):
        sl = slice(start, start + segment)
        if len(x[sl]) < window:
            continue
        total += 1
        piece_speed = None if v_all is None else v_all[sl]
        ok += int(_comfortable_piece(x[sl], y[sl], np.unwrap(yaw[sl]), piece_speed, dt, window, order))
    return ok / total if total else float("nan")


def _comfortable_piece(
    x: np.ndarray, y: np.ndarray, yaw: np.ndarray, speed: np.ndarray | None, dt: float, window: int,
    order: int,
) -> bool:
    """Whether one trajectory piece (yaw unwrapped) stays inside every comfort threshold."""

    def sg(a: np.ndarray, deriv: int) -> np.ndarray:
        return savgol_filter(a, window, order, deriv=deriv, delta=dt, mode="interp")

    if speed is None:
        vx, vy = sg(x, 1), sg(y, 1)
        v = vx * np.cos(yaw) + vy * np.sin(yaw)
    else:
        v = speed
    yaw_rate = sg(yaw, 1)
    yaw_acc = sg(yaw, 2)
    lon_acc = sg(v, 1)
    lon_jerk = sg(v, 2)
    lat_acc = sg(v, 0) * yaw_rate
    lat_jerk = sg(lat_acc, 1)
    jerk = np.hypot(lon_jerk, lat_jerk)
    return bool(
        np.all((lon_acc > COMFORT_LON_ACCEL[0]) & (lon_acc < COMFORT_LON_ACCEL[1]))
        and np.all(np.abs(lat_acc) < COMFORT_LAT_ACCEL)
        and np.all(jerk < COMFORT_JERK)
        and np.all(np.abs(lon_jerk) < COMFORT_LON_JERK)
        and np.all(np.abs(yaw_acc) < COMFORT_YAW_ACCEL)
        and np.all(np.abs(yaw_rate) < COMFORT_YAW_RATE)
    )


def efficiency(
    ego_speed: np.ndarray, traffic_speed: np.ndarray, progress: np.ndarray | None = None,
    n_checkpoints: int = 20,
) -> float:
    """Bench2Drive efficiency of one logged route: mean over checkpoints of 100 x mean ego speed /
    mean surrounding-traffic speed.

    `traffic_speed[t]` is the mean speed of the surrounding traffic at tick t (NaN where there is
    none). Checkpoints split the route into `n_checkpoints` equal parts of `progress` (completion in
    0..1 or 0..100 per tick), or into equal parts of time when `progress` is None. Parts without
    traffic samples are skipped, and so are ratios above 1000 % (as Bench2Drive's script does); NaN when
    none is left. May exceed 100.
    """
    ego = np.asarray(ego_speed, dtype=np.float64)
    traffic = np.asarray(traffic_speed, dtype=np.float64)
    if ego.shape != traffic.shape:
        raise ValueError("efficiency: ego_speed and traffic_speed must have the same shape")
    if len(ego) == 0:
        return float("nan")
    if progress is None:
        frac = np.arange(len(ego)) / len(ego)
    else:
        p = np.asarray(progress, dtype=np.float64)
        frac = p / 100.0 if np.nanmax(p) > 1.0 + 1e-9 else p
    part = np.clip((frac * n_checkpoints).astype(np.int64), 0, n_checkpoints - 1)
    values = []
    for k in range(n_checkpoints):
        sel = (part == k) & np.isfinite(traffic)
        value = _speed_ratio(float(ego[sel].sum()), float(traffic[sel].sum()), int(sel.sum()))
        if value is not None:
            values.append(value)
    mean = _mean_efficiency(values)
    return float("nan") if mean is None else mean
