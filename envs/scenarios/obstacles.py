"""Overtaking scenarios: something blocks the ego's lane and the ego has to go around it.

Bench2Drive's route_obstacles.py, construction_crash_vehicle.py, vehicle_opens_door.py and invading_turn.py:

- Accident(TwoWays): a police car at `distance` m after the trigger, two crashed cars 10 m and 16 m after
  it, all pushed 0.6 half lane widths towards the `direction` side; a warning board at the roadside.
- ConstructionObstacle(TwoWays): a construction zone at `distance` m: a traffic-warning board 5 m before
  its centre, debris 2 m after it, a line of 4 cones (2 m apart) along the passing side of the lane and
  3 cones (1 m apart) across it; a construction board at the roadside.
- ParkedObstacle(TwoWays): a parked car at `distance` m, 0.7 half lane widths towards `direction`.
- HazardAtSideLane(TwoWays): two bicycles 9 m apart at `distance` m, 0.55 half lane widths to the right,
  riding `bicycle_drive_distance` m at `bicycle_speed` km/h from the trigger, then stopping.
- VehicleOpensDoorTwoWays: a car parked beside the ego lane at `distance` m opens its door into the lane
  when the ego is 3 s (or 10 m) away.
- InvadingTurn: oncoming vehicles every 40 m, from `distance` + 30 m ahead to the trigger, drive
  `offset` m + half a lane width - 0.7 m off their lane centre into the ego's lane; cones line the outer
  edge of their lane.

The TwoWays variants run an oncoming flow (scenario-runner's OppositeActorFlow) in the opposite lane
once the ego is near the obstacle (5 s later): vehicles every `frequency` (from..to) m at the ego's speed
limit between a source 1.5 x limit (km/h) + 30 m ahead and a sink as far behind, both kept to the road
(never past a junction); they stop for an ego that blocks their lane (BasicAgent's obstacle detection),
which is how a gap opens. HazardAtSideLaneTwoWays instead spaces the oncoming traffic `frequency` m apart
(background spawn distance; 40 m before the ego is near). The non-TwoWays types cap the background
traffic's speed at `speed` km/h when the ego is near (SetMaxSpeed). Every type clears background traffic
from the ego lane ahead at the trigger, ends when the ego is 50 m past the obstacle (or its scenario
timeout, 240 s, passes: a `scenario_timeout` infraction) and then removes its actors, as CARLA does.

Obstacles are scene agents: cars PARKED_VEHICLE, cones and warning triangles CONE, boards and debris
STATIC, bicycles BICYCLE. Static props are scripted (`ScriptedActors`); moving ones (bicycles, invading
vehicles) are SUMO vehicles kept out of the Scene (`backend.hidden`) whose scene boxes are drawn with the
lateral offset SUMO's lane model cannot express. Hidden SUMO blockers sit under every lane-blocking
obstacle so that SUMO traffic queues behind it. The `timeout` parameter (seconds) is this project's
addition (scenario-runner hard-codes 240 s).
"""

from __future__ import annotations

import contextlib
import math
from typing import ClassVar

import numpy as np

from envs.geometry import boxes_overlap
from envs.scenarios.actors import ActorFlow, ScriptedActors
from envs.scenarios.base import Scenario, ScenarioError, register_scenario
from envs.scenarios.placement import (
    downstream_edges,
    junction_of,
    junction_passes,
    lane_heading,
    normal_predecessors_found,
    normal_successors,
    predecessors,
    wrap,
)
from envs.scene import AgentKind, Agents, Route, Scene

OBSTACLE_TIMEOUT_S = 240.0  # scenario-runner's _scenario_timeout of every overtaking scenario
TRIGGER_DISTANCE = 50.0  # ego this close to the obstacle (m) ...
WAIT_S = 5.0  # ... then this long before the speed cap / oncoming flow
END_DISTANCE = 50.0  # the scenario ends when the ego is this far past the obstacle
JUNCTION_MARGIN = 3.0  # obstacles moved forward "stop at junctions": keep them this far before one
CLEAR_EVERY = 20  # ticks between background clean-ups of the scenario's lanes
FLOW_TIME_DISTANCE = 1.5  # OppositeActorFlow: source / sink 1.5 x speed limit (km/h) + 30 m away
FLOW_BASE_DISTANCE = 30.0
FLOW_DETECTION = (10.0, 1.6)  # BasicAgent of the oncoming flow: brakes for obstacles within 10 + 1.6 v m
FLOW_EMERGENCY_DECEL = 8.0  # m/s^2, its emergency stop
DOOR_REACH = 1.0  # m an open front door sticks out of the car's side
DOOR_OPEN_S = 1.0  # the door swings open over this long
DOOR_REACTION_S = 3.0  # the door opens when the ego is this many seconds away ...
DOOR_MIN_DISTANCE = 10.0  # ... or this close
CAR = (2.4, 0.95, 1.5)  # half length, half width, height of a CARLA car (m)
POLICE = (2.5, 1.05, 1.6)
BICYCLE = (0.9, 0.35, 1.7)
CONE = (0.2, 0.2, 0.7)
WARNING_BOARD = (0.9, 0.15, 1.6)  # roadside 'warningaccident' / 'warningconstruction' sign boards
TRAFFIC_WARNING = (0.5, 1.2, 2.4)  # the 'trafficwarning' arrow-board trailer, across the lane
DEBRIS = (1.0, 1.0, 0.15)
CONE_COLOR = (255, 90, 0)


# ------------------------------------------------------------------------------- road geometry
def _right(yaw: float) -> np.ndarray:
    return np.array([math.sin(yaw), -math.cos(yaw)])


def _fwd(yaw: float) -> np.ndarray:
    return np.array([math.cos(yaw), math.sin(yaw)])


def _junction_degree(lanes, junction: str) -> int:
    """Number of distinct normal edges entering a junction (cached on the LaneGraph)."""
    cache = getattr(lanes, "_obstacle_junction_degree", None)
    if cache is None:
        incoming: dict[str, set[str]] = {}
        for i in np.flatnonzero(lanes.is_internal):
            jid = junction_of(lanes, int(i))
            for p in predecessors(lanes, int(i)):
                if not lanes.is_internal[p] and lanes.drivable[p]:
                    incoming.setdefault(jid, set()).add(lanes.edge_of_lane[p])
        cache = {j: len(e) for j, e in incoming.items()}
        lanes._obstacle_junction_degree = cache
    return cache.get(junction, 0)


def _real_junction(lanes, internal_lane: int) -> bool:
    """A junction CARLA would call one: three or more roads meet (a node joining two stretches of the
    same road, a lane-count change or a dead-end turnaround is not)."""
    jid = junction_of(lanes, internal_lane)
    return jid is not None and _junction_degree(lanes, jid) >= 3


def _junction_entries(route: Route, lanes) -> np.ndarray:
    """Route distances where the route enters a real junction."""
    out = []
    for jp in junction_passes(route, lanes):
        lane = int(route.lane[jp.entry_index])
        if lane >= 0 and _real_junction(lanes, lane):
            out.append(jp.entry_s)
    return np.asarray(out, np.float64)


def _straightest(lanes, cands: list[int], yaw: float, at_end: bool) -> int:
    """The drivable candidate whose heading (at its start, or end) is closest to `yaw`, never a U-turn
    (120 degrees or more off); the first found wins a tie; -1 if none."""
    best, best_d = -1, math.radians(120)
    for c in cands:
        if not lanes.drivable[c]:
            continue
        d = abs(wrap(lane_heading(lanes, c, at_end=at_end) - yaw))
        if d < best_d:
            best, best_d = c, d
    return best


def _next_normal(lanes, lane: int) -> int:
    """The straightest drivable normal lane after `lane` not through a real junction, or -1."""
    cands = [nxt for via, nxt in normal_successors(lanes, lane) if via < 0 or not _real_junction(lanes, via)]
    return _straightest(lanes, cands, lane_heading(lanes, lane, at_end=True), at_end=False)


def _prev_normal(lanes, lane: int) -> int:
    """The straightest drivable normal lane before `lane` not through a real junction, or -1."""
    cands = normal_predecessors_found(lanes, lane, through=lambda via: not _real_junction(lanes, via))
    return _straightest(lanes, cands, lane_heading(lanes, lane, at_end=False), at_end=True)


def _walk(lanes, lane: int, pos: float, distance: float, forward: bool) -> tuple[list[int], float]:
    """Lanes passed walking `distance` m along (forward) or against the lane direction from (lane, pos),
    stopping at a real junction; returns (lanes from the start lane on, position on the last one)."""
    chain = [lane]
    if forward:
        remaining = distance - (float(lanes.length[lane]) - pos)
        while remaining > 0:
            nxt = _next_normal(lanes, chain[-1])
            if nxt < 0 or nxt in chain:
                return chain, float(lanes.length[chain[-1]])
            chain.append(nxt)
            remaining -= float(lanes.length[nxt])
        return chain, float(lanes.length[chain[-1]]) + remaining
    remaining = distance - pos
    while remaining > 0:
        prv = _prev_normal(lanes, chain[-1])
        if prv < 0 or prv in chain:
            return chain, 0.0
        chain.append(prv)
        remaining -= float(lanes.length[prv])
    return chain, -remaining


def _adjacent_opposite(lanes, lane: int, pos: float) -> tuple[int, float]:
    """(lane, position) of the opposite-direction lane right next to the left of (lane, pos), or (-1, 0)."""
    x, y, yaw = lanes.position_on_lane(lane, pos)
    reach = float(lanes.width[lane]) + 1.5
    for cand, dist, s, lyaw in lanes.nearest_lanes(x, y, radius=reach):
        if lanes.is_internal[cand] or cand == lane or abs(wrap(lyaw - yaw)) < math.radians(150):
            continue
        px, py, _ = lanes.position_on_lane(cand, s)
        side = (px - x) * -math.sin(yaw) + (py - y) * math.cos(yaw)  # > 0: on the left
        if side > 0 and dist <= 0.5 * (lanes.width[lane] + lanes.width[cand]) + 1.0:
            return int(cand), float(s)
    return -1, 0.0


def _same_left(lanes, lane: int) -> int:
    """Drivable same-direction lane on the left of `lane` (-1 if none)."""
    left = int(lanes.left[lane])
    return left if left >= 0 and lanes.drivable[left] else -1


# ------------------------------------------------------------------------ the oncoming flow
class _OppositeFlow:
    """Scenario-runner's OppositeActorFlow on SUMO: vehicles from `source` to `sink` on the opposite
    lanes at `speed`, `gap_range` m apart; removed at the sink; a vehicle brakes for the ego when the ego
    is in its way (BasicAgent's detection: 10 m + 1.6 x speed ahead)."""

    def __init__(self, sc: Scenario, lanes_chain: list[int], source_pos: float, sink_lane: int,
                 sink_pos: float, speed: float, gap_range: tuple[float, float], tag: str,
                 hidden: bool = False, yield_to_ego: bool = True) -> None:
        lanes = sc.ctx.lanes
        self.sc = sc
        self.backend = sc.ctx.backend
        edges: list[str] = []
        for ln in lanes_chain:
            e = lanes.edge_of_lane[ln]
            if not edges or edges[-1] != e:
                edges.append(e)
        self.edges = edges
        self.sink_edge = lanes.edge_of_lane[sink_lane]
        self.sink_pos = sink_pos
        self.hidden = hidden
        self.yield_to_ego = yield_to_ego
        self.flow = ActorFlow(self.backend, f"{sc.prefix}_{tag}", edges,
                              int(lanes.lane_index[lanes_chain[0]]), source_pos, speed, gap_range, sc.ctx.rng,
                              max_actors=12)
        self._braking: set[str] = set()
        sx, sy, _ = lanes.position_on_lane(lanes_chain[0], source_pos)
        kx, ky, _ = lanes.position_on_lane(sink_lane, sink_pos)
        self.source_xy = np.array([sx, sy])
        self.sink_xy = np.array([kx, ky])
        self.lanes_chain = lanes_chain

    @property
    def active(self) -> bool:
        return self.flow.active

    def start(self) -> None:
        self.flow.start()

    def lane_points(self) -> np.ndarray:
        """Points along the flow's lanes (for clearing background traffic off them)."""
        lanes = self.sc.ctx.lanes
        return np.concatenate([lanes.polyline(ln)[::3] for ln in self.lanes_chain])

    def stop(self) -> None:
        """End of the scenario: no more vehicles, the ones driving are removed."""
        self.flow.stop()
        for vid in self.flow.alive():
            _remove(self.backend, vid)

    def alive(self) -> list[str]:
        return self.flow.alive()

    def tick(self, scene: Scene) -> None:
        if not self.flow.active:
            return
        before = len(self.flow.spawned)
        self.flow.tick()
        if self.hidden:
            self.backend.hidden.update(self.flow.spawned[before:])
        ls = self.backend.ls
        blocking = self.yield_to_ego and self._ego_in_lanes(scene)
        ego_s = _route_s(scene.route, scene.ego.x, scene.ego.y) if blocking else 0.0
        for vid in self.flow.alive():
            try:
                road = ls.vehicle.getRoadID(vid)
                if road == self.sink_edge and ls.vehicle.getLanePosition(vid) >= self.sink_pos:
                    ls.vehicle.remove(vid)
                    self._braking.discard(vid)
                    continue
                if self.yield_to_ego:
                    self._yield(ls, vid, blocking, ego_s, scene)
            except ls.TraCIException:
                continue

    def _ego_in_lanes(self, scene: Scene) -> bool:
        """The ego's centre is within half its width of the flow's lanes (it blocks them)."""
        ego = scene.ego
        lanes = self.sc.ctx.lanes
        chain = set(self.lanes_chain)
        for lane, dist, _s, _yaw in lanes.nearest_lanes(ego.x, ego.y, radius=4.0):
            if lane in chain and dist < 0.5 * float(lanes.width[lane]) + 0.5 * ego.half_width:
                return True
        return False

    def _yield(self, ls, vid: str, blocking: bool, ego_s: float, scene: Scene) -> None:
        """BasicAgent's obstacle detection along the flow's lane: an emergency stop (8 m/s^2) while the
        ego blocks the lane within 10 m + 1.6 x speed ahead of the vehicle."""
        hit = False
        if blocking:
            x, y = ls.vehicle.getPosition(vid)
            gap = _route_s(scene.route, x, y) - ego_s - scene.ego.half_length  # the flow drives towards -s
            base, ratio = FLOW_DETECTION
            hit = -scene.ego.half_length < gap < base + ratio * ls.vehicle.getSpeed(vid)
        if hit and vid not in self._braking:
            ls.vehicle.setDecel(vid, FLOW_EMERGENCY_DECEL)
            ls.vehicle.setSpeed(vid, 0.0)
            self._braking.add(vid)
        elif not hit and vid in self._braking:
            ls.vehicle.setDecel(vid, ls.vehicletype.getDecel(ls.vehicle.getTypeID(vid)))
            ls.vehicle.setSpeed(vid, -1)
            self._braking.discard(vid)


def _route_s(route: Route, x: float, y: float) -> float:
    """Route distance of the dense route point nearest to (x, y)."""
    k = int(np.argmin(np.hypot(route.points[:, 0] - x, route.points[:, 1] - y)))
    return float(route.cum_length[k])


def _remove(backend, vid: str) -> None:
    ls = backend.ls
    with contextlib.suppress(Exception):
        if vid in backend.vehicle_ids() or vid in ls.simulation.getPendingVehicles():
            ls.vehicle.remove(vid)
    backend.hidden.discard(vid)


def _shadow_agents(backend, ids: list[str], lateral: float, kind: int, color: tuple[int, int, int],
                   extent: tuple[float, float, float] | None = None, visible_ids: list[str] | None = None
                   ) -> Agents:
    """Scene boxes of hidden SUMO vehicles drawn `lateral` m to the right of their lane position
    (negative: left); `extent` overrides SUMO's size."""
    ls = backend.ls
    present = set(backend.vehicle_ids())
    rows = []
    names = []
    for k, vid in enumerate(ids):
        if vid not in present:
            continue
        fx, fy = ls.vehicle.getPosition(vid)
        yaw = math.radians(90.0 - ls.vehicle.getAngle(vid))
        v = ls.vehicle.getSpeed(vid)
        length = ls.vehicle.getLength(vid)
        hl, hw, h = extent or (0.5 * length, 0.5 * ls.vehicle.getWidth(vid), 1.5)
        c, s = math.cos(yaw), math.sin(yaw)
        x = fx - 0.5 * length * c + lateral * s
        y = fy - 0.5 * length * s - lateral * c
        rows.append((x, y, yaw, hl, hw, h, v * c, v * s, v))
        names.append(visible_ids[k] if visible_ids else vid)
    if not rows:
        return Agents()
    a = np.asarray(rows, np.float64)
    n = len(rows)
    return Agents(
        ids=names,
        kind=np.full(n, kind, np.int8),
        box=a[:, :5].copy(),
        height=a[:, 5].copy(),
        velocity=a[:, 6:8].copy(),
        speed=a[:, 8].copy(),
        accel=np.zeros(n),
        color=np.tile(np.asarray(color, np.uint8), (n, 1)),
    )


# -------------------------------------------------------------------------------- base class
class _Overtaking(Scenario):
    """Shared machinery: placement along the route, props, hidden blockers, background clean-up, the
    speed cap, the oncoming flow, the end condition and the scenario timeout."""

    two_ways: ClassVar[bool] = False
    stops_at_junction: ClassVar[bool] = True  # obstacle distance measured with _move_waypoint_forward
    junction_free: ClassVar[bool] = False  # the whole scene must lie before the next real junction
    # Route metres the scene occupies after `distance` (for candidate triggers) and sampled distances.
    extra_span: ClassVar[float] = 0.0
    distance_range: ClassVar[tuple[float, float]] = (40.0, 100.0)
    # Sampled speed cap (km/h) of the one-way types; sampled oncoming gaps (from, to ranges, m) of TwoWays.
    speed_range: ClassVar[tuple[float, float]] = (40.0, 60.0)
    frequency_ranges: ClassVar[tuple[tuple[float, float], tuple[float, float]]] = (
        (40.0, 65.0), (100.0, 125.0))
    what: ClassVar[str] = "get past the obstacle"

    def __init__(self, spec: object, ctx) -> None:
        super().__init__(spec, ctx)
        self.prefix = f"sc_{self.uid}"
        self.props = ScriptedActors()
        self.blockers: list[str] = []
        self.flow: _OppositeFlow | None = None
        self.end_s = math.inf
        self._ended = False
        self._near_since: float | None = None
        self._capped: set[str] = set()
        self._cap_active = False
        self._clear_span: tuple[float, float] | None = None  # ego-lane stretch kept free of background

    # ------------------------------------------------------------------------- parameters
    def direction(self) -> float:
        """+1 for 'right', -1 for 'left'."""
        return 1.0 if self.side_param("direction") == "right" else -1.0

    def timeout_s(self) -> float:
        return self.float_param("timeout")

    # -------------------------------------------------------------------------- placement
    def forward(self, s0: float, distance: float, stop_at_junction: bool = True) -> float:
        """Route distance `distance` m after s0; with `stop_at_junction`, kept before the next real
        junction (scenario-runner's _move_waypoint_forward) and before the route's end."""
        s = s0 + distance
        if stop_at_junction:
            entries = _junction_entries(self.ctx.route, self.ctx.lanes)
            ahead = entries[entries > s0 + 0.5]
            if len(ahead):
                s = min(s, max(float(ahead[0]) - JUNCTION_MARGIN, s0))
        return min(s, self.ctx.route.length - 1.0)

    def lane_at(self, s: float) -> tuple[int, float, np.ndarray, float, float]:
        """(lane, position on it, centre xy, yaw, lane width) of the route's lane at route distance s."""
        try:
            lane, pos = self.route_lane_at(s)
        except ScenarioError:
            raise self.fail(f"no lane at {s:.0f} m along the route") from None
        lanes = self.ctx.lanes
        x, y, yaw = lanes.position_on_lane(lane, pos)
        return lane, pos, np.array([x, y]), yaw, float(lanes.width[lane])

    def route_s_of(self, xy: np.ndarray) -> float:
        return _route_s(self.ctx.route, float(xy[0]), float(xy[1]))

    def add_blocker(self, lane: int, front_pos: float, length: float) -> None:
        """A hidden parked SUMO vehicle covering [front_pos - length, front_pos] of `lane`."""
        vid = f"{self.prefix}_blk{len(self.blockers)}"
        lanes = self.ctx.lanes
        length = float(min(max(length, 1.0), max(lanes.length[lane] - 0.2, 1.0)))
        front = float(np.clip(front_pos, length, lanes.length[lane] - 0.1))
        along = np.arange(front - length, front + 1.0, 2.0)
        pts = np.array([lanes.position_on_lane(lane, p)[:2] for p in along])
        self.ctx.backend.remove_vehicles_near(pts, 3.0)  # background cars standing where the obstacle goes
        self.ctx.backend.park_vehicle(vid, lanes.lane_ids[lane], front, length=length, hidden=True)
        self.blockers.append(vid)

    def block_route_stretch(self, s_back: float, s_front: float) -> None:
        """Hidden blockers on the route's lanes from route distance s_back to s_front."""
        lane0, pos0 = self.route_lane_at(s_back)
        lane1, pos1 = self.route_lane_at(s_front)
        if lane0 == lane1:
            self.add_blocker(lane1, pos1, pos1 - pos0)
        else:  # the stretch crosses a lane boundary: one blocker on either side
            self.add_blocker(lane0, float(self.ctx.lanes.length[lane0]), self.ctx.lanes.length[lane0] - pos0)
            self.add_blocker(lane1, pos1, pos1)

    def side_prop(self, kind_name: str) -> None:
        """The roadside warning board at the trigger point, beyond the outermost driving lane on the
        `direction` side (scenario-runner's _spawn_side_prop)."""
        lanes = self.ctx.lanes
        sign = self.direction()
        lane, pos, _, _, _ = self.lane_at(self.trigger_s)
        outer = lane
        while True:
            nxt = int(lanes.right[outer] if sign > 0 else lanes.left[outer])
            if nxt < 0 or not lanes.drivable[nxt]:
                break
            outer = nxt
        x, y, yaw = lanes.position_on_lane(outer, pos)
        w = float(lanes.width[outer])
        beyond = int(lanes.right[outer] if sign > 0 else lanes.left[outer])
        # centre of the non-driving lane beyond (a shoulder ~2 m wide when the net has none) + 0.3 w out
        step = 0.5 * w + (0.5 * float(lanes.width[beyond]) if beyond >= 0 else 1.0) + 0.3 * w
        p = np.array([x, y]) + sign * step * _right(yaw)
        # Turned 90 degrees (CARLA's yaw + 90): the board faces the traffic.
        self.props.add(f"{self.prefix}_{kind_name}", AgentKind.STATIC, p[0], p[1], yaw - 0.5 * math.pi,
                       WARNING_BOARD, color=(230, 120, 20))

    def clear_route_ahead(self, s_from: float, s_to: float) -> None:
        """Remove background vehicles on the ego's lane between two route distances (LeaveSpaceInFront /
        RemoveRoadLane)."""
        route = self.ctx.route
        k0, k1 = np.searchsorted(route.cum_length, [s_from, s_to])
        if k1 <= k0:
            return
        self.ctx.backend.remove_vehicles_near(route.points[k0:k1:10], 1.6)

    # ----------------------------------------------------------------------------- ticking
    def tick(self, scene: Scene) -> None:
        if not self.status.triggered:
            if self.blockers and math.isfinite(self.end_s) and scene.tick % CLEAR_EVERY == 0:
                # Background cars would queue behind the blockers from the start and hold the ego up
                # before it reaches the trigger; CARLA's background manager keeps that lane free.
                self.clear_route_ahead(max(self.ego_s(scene) + 10.0, self.trigger_s - 60.0), self.end_s)
            return
        if self._ended:
            return
        self.behave(scene)
        if self.flow is not None:
            self.flow.tick(scene)
            if self.flow.active and scene.tick % CLEAR_EVERY == 0:
                self.ctx.backend.remove_vehicles_near(self.flow.lane_points(), 2.0)
        if self._clear_span is not None and scene.tick % CLEAR_EVERY == 0:
            ego_s = self.ego_s(scene)
            self.clear_route_ahead(max(ego_s + 6.0, self._clear_span[0]), self._clear_span[1])
        if self._cap_active and scene.tick % CLEAR_EVERY == 0:
            self._apply_speed_cap(scene)
        passed = self.passed(scene)
        timed_out = self.seconds_since_trigger(scene) > self.timeout_s()
        self.check_timeout(scene, passed, self.timeout_s(), self.what)
        if passed or timed_out:
            self.finish()

    def behave(self, scene: Scene) -> None:
        """Type-specific behaviour, every tick after the trigger until the end."""

    def passed(self, scene: Scene) -> bool:
        return self.ego_s(scene) > self.end_s

    def near_for(self, scene: Scene, xy: np.ndarray, distance: float) -> bool:
        """True once the ego has been within `distance` m of xy and WAIT_S seconds have passed since."""
        if self._near_since is None:
            if math.hypot(scene.ego.x - xy[0], scene.ego.y - xy[1]) < distance:
                self._near_since = scene.time
            return False
        return scene.time - self._near_since >= WAIT_S

    def react_near(self, scene: Scene, xy: np.ndarray, distance: float = TRIGGER_DISTANCE) -> None:
        """Once the ego has been near the obstacle at xy (`near_for`): the oncoming flow on TwoWays
        types, the background speed cap on the others."""
        if self.near_for(scene, xy, distance):
            if self.two_ways:
                self.start_flow(scene)
            else:
                self.start_speed_cap(scene)

    def start_speed_cap(self, scene: Scene) -> None:
        if not self._cap_active:
            self._cap_active = True
            self.status.notes.append(f"background traffic capped at {self.float_param('speed'):.0f} km/h")
            self._apply_speed_cap(scene)

    def _apply_speed_cap(self, scene: Scene) -> None:
        ls = self.ctx.backend.ls
        cap = self.float_param("speed") / 3.6
        for vid in ls.vehicle.getIDList():
            if not vid.startswith("bg"):
                continue
            x, y = ls.vehicle.getPosition(vid)
            if math.hypot(x - scene.ego.x, y - scene.ego.y) < 100.0:
                ls.vehicle.setMaxSpeed(vid, cap)
                self._capped.add(vid)

    def start_flow(self, scene: Scene) -> None:
        if self.flow is not None and not self.flow.active:
            self.ctx.backend.remove_vehicles_near(self.flow.lane_points(), 2.0)  # ChangeOppositeBehavior
            self.flow.start()
            self.status.notes.append("oncoming flow started")

    def finish(self) -> None:
        """End of the scenario: actors destroyed, flows stopped, the speed cap lifted."""
        self._ended = True
        backend = self.ctx.backend
        if self.flow is not None:
            self.flow.stop()
        for vid in self.blockers:
            _remove(backend, vid)
        for vid in self.own_vehicles():
            _remove(backend, vid)
        for aid in list(self.props._actors):
            self.props.remove(aid)
        if self._capped:
            ls = backend.ls
            alive = set(backend.vehicle_ids())
            for vid in self._capped & alive:
                with contextlib.suppress(Exception):
                    ls.vehicle.setMaxSpeed(vid, ls.vehicletype.getMaxSpeed(ls.vehicle.getTypeID(vid)))
            self._capped.clear()
        self._cap_active = False
        self._clear_span = None

    def own_vehicles(self) -> list[str]:
        """SUMO vehicles (besides blockers and flows) the scenario owns."""
        return []

    def scripted_agents(self) -> Agents:
        return self.props.agents()

    def park_car(self, actor_id: str, s: float, offset: float, extent: tuple[float, float, float],
                 color: tuple[int, int, int]) -> np.ndarray:
        """A parked-car prop at route distance s, `offset` half lane widths towards `direction`, over a
        hidden blocker of its length; returns its centre."""
        lane, pos, c, yaw, w = self.lane_at(s)
        p = c + self.direction() * offset * 0.5 * w * _right(yaw)
        self.props.add(actor_id, AgentKind.PARKED_VEHICLE, p[0], p[1], yaw, extent, color=color)
        self.add_blocker(lane, pos + extent[0], 2 * extent[0])
        return p

    def leave_space(self, scene: Scene, beyond: float) -> None:
        """LeaveSpaceInFront at the trigger: no background traffic on the ego lane from just ahead of the
        ego to `distance` + `beyond` + 20 m."""
        ego_s = self.ego_s(scene)
        self.clear_route_ahead(ego_s + 6.0, ego_s + self.float_param("distance") + beyond + 20.0)

    # ----------------------------------------------------------------------- the oncoming flow
    def make_opposite_flow(self, s: float, gap_range: tuple[float, float],
                           tag: str = "flow") -> _OppositeFlow:
        """OppositeActorFlow referenced at the opposite lane beside route distance s."""
        lanes = self.ctx.lanes
        lane, pos, _, _, _ = self.lane_at(s)
        opp, opp_pos = _adjacent_opposite(lanes, lane, pos)
        if opp < 0:
            raise self.fail(f"no opposite lane beside the ego lane {lanes.lane_ids[lane]} for the "
                            "oncoming flow")
        speed = float(lanes.speed_limit[lane])
        dist = FLOW_TIME_DISTANCE * speed * 3.6 + FLOW_BASE_DISTANCE
        back, src_pos = _walk(lanes, opp, opp_pos, dist, forward=False)
        fwd, sink_pos = _walk(lanes, opp, opp_pos, dist, forward=True)
        chain = list(reversed(back)) + fwd[1:]
        return _OppositeFlow(self, chain, src_pos, fwd[-1], sink_pos, speed, gap_range, tag)

    # ----------------------------------------------------------------------- sampler hooks
    @classmethod
    def lane_ok(cls, lanes, lane: int, pos: float) -> bool:
        """Whether the obstacle may stand on (lane, pos): multi-lane types need a same-direction lane on
        the left to change to; TwoWays types a lane of the opposite direction there and none of their own."""
        if lanes.is_internal[lane] or not lanes.drivable[lane]:
            return False
        if cls.two_ways:
            return _same_left(lanes, lane) < 0 and _adjacent_opposite(lanes, lane, pos)[0] >= 0
        return _same_left(lanes, lane) >= 0

    @classmethod
    def candidate_triggers(cls, route: Route, lanes: object) -> np.ndarray:
        """Every 5 m on a normal lane where the route goes on for the longest sampled scene plus 20 m and
        the lane fits the type (`lane_ok`) wherever the obstacle may stand (every 10 m from the shortest
        to the longest sampled distance). Types whose obstacle stops before junctions need the shortest
        scene to fit before the next real junction (positions past it are not checked: the obstacle
        never gets there); `junction_free` types need no real junction up to the longest scene."""
        lo, hi = cls.distance_range
        span_lo, span_hi = lo + cls.extra_span, hi + cls.extra_span
        if route.length < span_hi + 20.0 + 30.0:
            return np.zeros(0)
        s = np.arange(30.0, route.length - span_hi - 20.0, 5.0)
        entries = _junction_entries(route, lanes)
        lane_arr = np.asarray(route.lane)
        internal = np.zeros(len(lane_arr), np.bool_)
        valid = lane_arr >= 0
        internal[valid] = np.asarray(lanes.is_internal)[lane_arr[valid]]
        internal |= ~valid
        out = []
        cache: dict[int, bool] = {}

        def fits(k: int) -> bool:
            while k < len(lane_arr) - 1 and internal[k]:  # placement moves out of a junction
                k += 1
            key = k // 20  # 2 m bins of the dense route
            if key not in cache:
                ln = int(lane_arr[k])
                pos = _lane_pos(lanes, ln, route.points[k])
                cache[key] = (not internal[k]) and cls.lane_ok(lanes, ln, pos)
            return cache[key]

        for s0 in s:
            k0 = int(np.searchsorted(route.cum_length, s0))
            if internal[k0]:
                continue
            ahead = entries[entries > s0]
            limit = float(ahead[0]) - JUNCTION_MARGIN if len(ahead) else math.inf
            if cls.junction_free and s0 + span_hi > limit:
                continue
            if cls.stops_at_junction:
                if s0 + span_lo > limit:
                    continue
                top = min(span_hi, limit - s0)
            else:
                top = span_hi
            first = 0.0 if cls.junction_free else lo  # junction_free types use the road from the trigger on
            ks = np.minimum(np.searchsorted(route.cum_length, s0 + np.arange(first, top + 1e-6, 10.0)),
                            len(lane_arr) - 1)
            if all(fits(int(k)) for k in ks):
                out.append(s0)
        return np.asarray(out, np.float64)

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        """The obstacle distance, then the oncoming flow's gaps (TwoWays) or the speed cap (right side)."""
        params = {"distance": {"value": _uniform(rng, *cls.distance_range)}}
        if cls.two_ways:
            (from_lo, from_hi), (to_lo, to_hi) = cls.frequency_ranges
            params["frequency"] = {"from": _uniform(rng, from_lo, from_hi), "to": _uniform(rng, to_lo, to_hi)}
        else:
            params["direction"] = {"value": "right"}
            params["speed"] = {"value": _uniform(rng, *cls.speed_range)}
        return params


def _lane_pos(lanes, lane: int, xy: np.ndarray) -> float:
    for cand, _d, s, _y in lanes.nearest_lanes(float(xy[0]), float(xy[1]), radius=4.0):
        if cand == lane:
            return float(s)
    return 0.0


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> str:
    return str(round(rng.uniform(lo, hi)))


# ------------------------------------------------------------------------------- the types
@register_scenario
class Accident(_Overtaking):
    """A police car and two crashed cars block the ego lane after `distance` m."""

    type_name = "Accident"
    defaults: ClassVar[dict[str, str]] = {
        "distance": "120",
        "direction": "right",
        "speed": "60",
        "timeout": str(OBSTACLE_TIMEOUT_S),
    }
    differs_from_carla: ClassVar[str] = (
        "crashed cars are boxes at the lane side over hidden SUMO blockers; no ActorBlockedTest pause"
    )
    key_moment_s: ClassVar[float] = 4.0
    extra_span = 16.0 + 2.5
    distance_range = (40.0, 100.0)
    what = "get past the accident"
    OFFSET = 0.6  # of half a lane width, towards `direction`
    FIRST, SECOND = 10.0, 6.0

    def setup(self) -> None:
        self.direction()  # checked first
        self.police_s = self.forward(self.trigger_s, self.float_param("distance"))
        self.first_s = self.forward(self.police_s, self.FIRST)
        self.second_s = self.forward(self.first_s, self.SECOND)
        self.end_s = self.forward(self.second_s, END_DISTANCE)
        self.side_prop("warning")
        self.cars: list[tuple[str, np.ndarray]] = []
        for role, s, ext, color in (
            ("police", self.police_s, POLICE, (20, 30, 90)),
            ("crashed1", self.first_s, CAR, (150, 150, 150)),
            ("crashed2", self.second_s, CAR, (120, 30, 30)),
        ):
            aid = f"{self.prefix}_{role}"
            self.cars.append((aid, self.park_car(aid, s, self.OFFSET, ext, color)))
        self.first_xy = self.cars[1][1]
        if self.two_ways:
            self.flow = self.make_opposite_flow(self.second_s, self.interval_param("frequency"))

    def on_trigger(self, scene: Scene) -> None:
        self.leave_space(scene, self.FIRST + self.SECOND)

    def behave(self, scene: Scene) -> None:
        self.react_near(scene, self.first_xy)


@register_scenario
class AccidentTwoWays(Accident):
    """Accident on a road with one lane each way: pass through the opposite lane between oncoming cars."""

    type_name = "AccidentTwoWays"
    defaults: ClassVar[dict[str, str]] = {**Accident.defaults, "frequency": "20,100"}
    differs_from_carla: ClassVar[str] = (
        "oncoming SUMO cars stop for an ego in their lane; crashed cars are boxes over hidden blockers"
    )
    two_ways = True
    distance_range = (40.0, 100.0)
    frequency_ranges = ((40.0, 65.0), (100.0, 125.0))


@register_scenario
class ParkedObstacle(_Overtaking):
    """A parked car (hazard lights on) blocks the ego lane after `distance` m."""

    type_name = "ParkedObstacle"
    defaults: ClassVar[dict[str, str]] = {
        "distance": "120",
        "direction": "right",
        "speed": "60",
        "timeout": str(OBSTACLE_TIMEOUT_S),
    }
    differs_from_carla: ClassVar[str] = (
        "the parked car is a box at the lane side over a hidden SUMO blocker; no ActorBlockedTest pause"
    )
    key_moment_s: ClassVar[float] = 4.0
    extra_span = 2.5
    distance_range = (40.0, 100.0)
    what = "pass the parked obstacle"
    OFFSET = 0.7
    OBSTACLE = "sc_parked_obstacle"
    actor_ids = ("OBSTACLE",)

    def setup(self) -> None:
        self.direction()  # checked first
        self.vehicle_s = self.forward(self.trigger_s, self.float_param("distance"))
        self.end_s = self.forward(self.vehicle_s, END_DISTANCE)
        self.side_prop("warning")
        self.vehicle_xy = self.park_car(self.OBSTACLE, self.vehicle_s, self.OFFSET, CAR, (60, 90, 160))
        if self.two_ways:
            self.flow = self.make_opposite_flow(self.vehicle_s, self.interval_param("frequency"))

    def on_trigger(self, scene: Scene) -> None:
        self.leave_space(scene, 0.0)

    def behave(self, scene: Scene) -> None:
        self.react_near(scene, self.vehicle_xy)


@register_scenario
class ParkedObstacleTwoWays(ParkedObstacle):
    """A parked car blocks the ego lane of a two-way road: pass through the opposite lane."""

    type_name = "ParkedObstacleTwoWays"
    defaults: ClassVar[dict[str, str]] = {**ParkedObstacle.defaults, "frequency": "20,100"}
    differs_from_carla: ClassVar[str] = (
        "oncoming SUMO cars stop for an ego in their lane; the parked car is a box over a hidden blocker"
    )
    two_ways = True
    distance_range = (40.0, 90.0)
    frequency_ranges = ((38.0, 50.0), (80.0, 120.0))


@register_scenario
class ConstructionObstacle(_Overtaking):
    """A construction zone (warning board, cones, debris) blocks the ego lane after `distance` m."""

    type_name = "ConstructionObstacle"
    defaults: ClassVar[dict[str, str]] = {
        "distance": "100",
        "direction": "right",
        "speed": "60",
        "timeout": str(OBSTACLE_TIMEOUT_S),
    }
    differs_from_carla: ClassVar[str] = (
        "props are 2-D boxes (cones CONE, board and debris STATIC) over a hidden SUMO blocker; no physics"
    )
    key_moment_s: ClassVar[float] = 4.0
    extra_span = 8.5
    distance_range = (40.0, 100.0)
    stops_at_junction = False
    speed_range = (45.0, 55.0)
    what = "get past the construction zone"
    CONE_LINES = ((4, 2.0), (3, 1.0))  # (cones, spacing m): along the lane, then across it

    def setup(self) -> None:
        sign = self.direction()
        # Reference_waypoint.next(distance): follows the road through junctions.
        self.zone_s = self.forward(self.trigger_s, self.float_param("distance"), stop_at_junction=False)
        self.end_s = self.forward(self.zone_s, END_DISTANCE)
        self.side_prop("warning")
        _, _, c, yaw, w = self.lane_at(self.zone_s)
        f, r = _fwd(yaw), _right(yaw)
        self.zone_xy = c
        board = c - 5.0 * f
        self.props.add(f"{self.prefix}_trafficwarning", AgentKind.STATIC, board[0], board[1], yaw,
                       TRAFFIC_WARNING, color=(240, 200, 0))
        debris = c + 2.0 * f
        self.props.add(f"{self.prefix}_debris", AgentKind.STATIC, debris[0], debris[1], yaw, DEBRIS,
                       color=(110, 90, 60))
        # The cone line runs along the passing side of the lane (opposite to `direction`), then across.
        edge = c - sign * 0.85 * 0.5 * w * r
        k = 0
        (n_along, d_along), (n_across, d_across) = self.CONE_LINES
        for i in range(1, n_along + 1):
            p = edge + i * d_along * f
            self.props.add(f"{self.prefix}_cone{k}", AgentKind.CONE, p[0], p[1], yaw, CONE, color=CONE_COLOR)
            k += 1
        corner = edge + n_along * d_along * f
        for i in range(1, n_across + 1):
            p = corner + sign * i * d_across * r
            self.props.add(f"{self.prefix}_cone{k}", AgentKind.CONE, p[0], p[1], yaw, CONE, color=CONE_COLOR)
            k += 1
        back = self.zone_s - 5.0 - TRAFFIC_WARNING[0]
        front = self.zone_s + n_along * d_along + CONE[0]
        self.block_route_stretch(back, front)
        if self.two_ways:
            self.flow = self.make_opposite_flow(self.zone_s, self.interval_param("frequency"))

    def on_trigger(self, scene: Scene) -> None:
        # RemoveRoadLane: no background traffic in the ego lane while the scenario runs.
        self._clear_span = (self.ego_s(scene), self.end_s)
        self.clear_route_ahead(self.ego_s(scene) + 6.0, self.end_s)

    def behave(self, scene: Scene) -> None:
        self.react_near(scene, self.zone_xy, 30.0)


@register_scenario
class ConstructionObstacleTwoWays(ConstructionObstacle):
    """Construction zone on a two-way road: pass through the opposite lane between oncoming cars."""

    type_name = "ConstructionObstacleTwoWays"
    defaults: ClassVar[dict[str, str]] = {**ConstructionObstacle.defaults, "frequency": "20,100"}
    differs_from_carla: ClassVar[str] = (
        "oncoming SUMO cars stop for an ego in their lane; props are 2-D boxes over a hidden blocker"
    )
    two_ways = True
    distance_range = (40.0, 100.0)
    frequency_ranges = ((45.0, 65.0), (100.0, 170.0))


@register_scenario
class HazardAtSideLane(_Overtaking):
    """Two slow bicycles ride at the right edge of the ego lane; overtake them."""

    type_name = "HazardAtSideLane"
    defaults: ClassVar[dict[str, str]] = {
        "distance": "100",
        "speed": "60",
        "bicycle_drive_distance": "50",
        "bicycle_speed": "10",  # km/h (BasicAgent target speed)
        "timeout": str(OBSTACLE_TIMEOUT_S),
    }
    differs_from_carla: ClassVar[str] = (
        "bicycles are hidden SUMO vehicles drawn 0.55 half lane widths right of the lane centre; no physics"
    )
    key_moment_s: ClassVar[float] = 5.0
    extra_span = 9.0 + 1.0
    distance_range = (40.0, 80.0)
    what = "overtake the bicycles"
    OFFSET = 0.55
    GAP = 9.0
    BIKE_ACCEL = 1.5  # m/s^2 from standstill

    def setup(self) -> None:
        lanes = self.ctx.lanes
        backend = self.ctx.backend
        self.first_s = self.forward(self.trigger_s, self.float_param("distance"))
        second_s = self.forward(self.first_s, self.GAP)
        self.bike_speed = self.float_param("bicycle_speed") / 3.6
        self.drive_distance = self.float_param("bicycle_drive_distance")
        if self.bike_speed <= 0 or self.drive_distance < 0:
            raise self.fail("bicycle_speed must be > 0 and bicycle_drive_distance >= 0")
        self.bikes: list[str] = []
        self.visible: list[str] = []
        self._start_odo: dict[str, float] = {}
        self._done: set[str] = set()
        self.bike_lateral = 0.0
        route = self.ctx.route
        normal = [int(ln) for ln in route.lane if ln >= 0 and not lanes.is_internal[ln]]
        for k, s in enumerate((self.first_s, second_s)):
            edges, lane_index, pos, idx = self.lane_position(s)
            lane = int(route.lane[idx])
            short = self.drive_distance + 20.0 - (route.length - s)
            if short > 0 and normal:  # ride on past the route's end
                edges = edges + downstream_edges(lanes, normal[-1], short)[1:]
            self.bike_lateral = self.OFFSET * 0.5 * float(lanes.width[lane])
            vid = f"{self.prefix}_bike{k}"
            front = float(np.clip(pos + BICYCLE[0], 2 * BICYCLE[0] + 0.1, lanes.length[lane] - 0.1))
            backend.add_vehicle(vid, edges, lane_index, front, 0.0, length=2 * BICYCLE[0])
            backend.hidden.add(vid)
            ls = backend.ls
            ls.vehicle.setWidth(vid, 2 * BICYCLE[1])
            ls.vehicle.setSpeedMode(vid, 0)
            ls.vehicle.setLaneChangeMode(vid, 0)
            ls.vehicle.setSpeed(vid, 0.0)
            self.bikes.append(vid)
            self.visible.append(f"{self.prefix}_bicycle{k}")
        self._last_bike_s = math.inf
        self._ego_past_s: float | None = None
        self._bike_xy: np.ndarray | None = None
        if self.two_ways:
            self.flow = self.make_opposite_flow(self.first_s, (40.0, 40.0))

    def own_vehicles(self) -> list[str]:
        return self.bikes

    def on_trigger(self, scene: Scene) -> None:
        self.leave_space(scene, self.GAP)
        ls = self.ctx.backend.ls
        alive = set(self.ctx.backend.vehicle_ids())
        for vid in self.bikes:
            if vid in alive:
                self._start_odo[vid] = ls.vehicle.getDistance(vid)
        if self.two_ways:
            self.start_flow(scene)  # background-like oncoming traffic, 40 m apart

    def behave(self, scene: Scene) -> None:
        ls = self.ctx.backend.ls
        alive = set(self.ctx.backend.vehicle_ids())
        dt = scene.dt
        for vid in self.bikes:
            if vid not in alive or vid in self._done:
                continue
            odo = ls.vehicle.getDistance(vid)
            start = self._start_odo.setdefault(vid, odo)
            if odo - start >= self.drive_distance:
                ls.vehicle.setSpeed(vid, 0.0)  # reached its target: hand brake
                self._done.add(vid)
                continue
            ls.vehicle.setSpeed(vid, min(self.bike_speed, ls.vehicle.getSpeed(vid) + self.BIKE_ACCEL * dt))
        self._stop_behind_ego(scene)
        # Side lane behaviour once the ego is near the first bicycle.
        if self.bikes[0] in alive:
            fx, fy = ls.vehicle.getPosition(self.bikes[0])
            self._bike_xy = np.array([fx, fy])
        near = self._bike_xy is not None and self.near_for(scene, self._bike_xy, TRIGGER_DISTANCE)
        if near:
            if self.two_ways:
                gap = self.float_param("frequency")
                if self.flow is not None and self.flow.flow.gap_range != (gap, gap):
                    self.flow.flow.gap_range = (gap, gap)
                    self.status.notes.append(f"oncoming traffic spaced {gap:.0f} m")
            else:
                self.start_speed_cap(scene)
        if self.bikes[-1] in alive:
            x, y = ls.vehicle.getPosition(self.bikes[-1])
            self._last_bike_s = self.route_s_of(np.array([x, y]))

    def _stop_behind_ego(self, scene: Scene) -> None:
        """A cyclist stops while the ego is in its way within 2 m + 1 s of riding (scenario-runner rides
        them with agents that brake for what is in their path)."""
        ls = self.ctx.backend.ls
        bikes = _shadow_agents(self.ctx.backend, self.bikes, self.bike_lateral, AgentKind.BICYCLE,
                               (40, 120, 40), BICYCLE)
        ego = scene.ego.box()
        for k, vid in enumerate(bikes.ids):
            x, y, yaw, hl, hw = bikes.box[k]
            reach = 2.0 + float(bikes.speed[k])
            probe = np.array([x + math.cos(yaw) * (hl + 0.5 * reach), y + math.sin(yaw) * (hl + 0.5 * reach),
                              yaw, 0.5 * reach, hw + 0.2])
            if vid not in self._done and boxes_overlap(ego, probe):
                ls.vehicle.setSpeed(vid, 0.0)

    def passed(self, scene: Scene) -> bool:
        """In front of the last bicycle, then 50 m more (WaitUntilInFront + DriveDistance)."""
        ego_s = self.ego_s(scene)
        if self._ego_past_s is None and ego_s > self._last_bike_s + BICYCLE[0] + scene.ego.half_length:
            self._ego_past_s = ego_s
        return self._ego_past_s is not None and ego_s > self._ego_past_s + END_DISTANCE

    def scripted_agents(self) -> Agents:
        if self._ended:
            return self.props.agents()
        bikes = _shadow_agents(self.ctx.backend, self.bikes, self.bike_lateral, AgentKind.BICYCLE,
                               (40, 120, 40), BICYCLE, self.visible)
        return Agents.concat([self.props.agents(), bikes])

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        return {
            "distance": {"value": _uniform(rng, *cls.distance_range)},
            "speed": {"value": _uniform(rng, 30, 55)},
            "bicycle_drive_distance": {"value": _uniform(rng, 50, 150)},
            "bicycle_speed": {"value": _uniform(rng, 8, 15)},
        }


@register_scenario
class HazardAtSideLaneTwoWays(HazardAtSideLane):
    """Slow bicycles at the lane edge of a two-way road: overtake through the opposite lane."""

    type_name = "HazardAtSideLaneTwoWays"
    defaults: ClassVar[dict[str, str]] = {
        "distance": "100",
        "frequency": "100",  # m between oncoming vehicles once the ego is near (ChangeOppositeBehavior)
        "speed": "60",
        "bicycle_drive_distance": "50",
        "bicycle_speed": "10",
        "timeout": str(OBSTACLE_TIMEOUT_S),
    }
    differs_from_carla: ClassVar[str] = (
        "oncoming traffic is a scenario flow (40 m, then `frequency` m apart); bicycles are drawn boxes"
    )
    two_ways = True
    distance_range = (40.0, 50.0)

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        return {
            "distance": {"value": _uniform(rng, *cls.distance_range)},
            "frequency": {"value": _uniform(rng, 80, 100)},
            "bicycle_drive_distance": {"value": _uniform(rng, 90, 110)},
            "bicycle_speed": {"value": _uniform(rng, 8, 11)},
        }


@register_scenario
class VehicleOpensDoorTwoWays(_Overtaking):
    """A car parked beside the ego lane opens its door into the lane as the ego comes; pass it through the
    opposite lane."""

    type_name = "VehicleOpensDoorTwoWays"
    defaults: ClassVar[dict[str, str]] = {
        "distance": "50",
        "direction": "right",
        "speed": "60",
        "frequency": "20,100",
        "timeout": str(OBSTACLE_TIMEOUT_S),
    }
    differs_from_carla: ClassVar[str] = (
        "the open door widens the parked car's box 1 m towards the lane; StopBackVehicles = a hidden blocker"
    )
    key_moment_s: ClassVar[float] = 5.0
    two_ways = True
    stops_at_junction = False
    extra_span = 2.5
    distance_range = (40.0, 60.0)
    frequency_ranges = ((40.0, 50.0), (80.0, 100.0))
    what = "get past the open door"

    def setup(self) -> None:
        lanes = self.ctx.lanes
        sign = self.direction()
        self.front_s = self.forward(self.trigger_s, self.float_param("distance"), stop_at_junction=False)
        self.end_s = self.forward(self.front_s, END_DISTANCE)
        lane, pos, c, yaw, w = self.lane_at(self.front_s)
        self.front_xy = c
        self.ego_lane, self.ego_lane_pos = lane, pos
        side = int(lanes.right[lane] if sign > 0 else lanes.left[lane])
        w_side = float(lanes.width[side]) if side >= 0 else 2.5
        hw = CAR[1]
        # Parked on the side lane, moved (w_side - hw) / 4 towards the ego lane; never inside the lane.
        offset = max(0.5 * w + 0.5 * w_side - 0.25 * (w_side - hw), 0.5 * w + 0.1 + hw)
        self.side_dir = sign * _right(yaw)  # from the ego lane towards the parked car
        self.car_xy = c + offset * self.side_dir
        self.car_yaw = yaw
        self.car_id = f"{self.prefix}_parked"
        self.props.add(self.car_id, AgentKind.PARKED_VEHICLE, self.car_xy[0], self.car_xy[1], yaw, CAR,
                       color=(170, 170, 180))
        if side >= 0 and lanes.drivable[side]:
            self.add_blocker(side, pos + CAR[0], 2 * CAR[0])
        self.door_open_at: float | None = None
        self.door = 0.0  # metres the door reaches out
        self.flow = self.make_opposite_flow(self.front_s, self.interval_param("frequency"))

    def on_trigger(self, scene: Scene) -> None:
        self.leave_space(scene, 0.0)

    def behave(self, scene: Scene) -> None:
        ego = scene.ego
        if self.door_open_at is None:
            dist = math.hypot(ego.x - self.front_xy[0], ego.y - self.front_xy[1])
            if dist < DOOR_MIN_DISTANCE or (ego.speed > 0.1 and dist / ego.speed < DOOR_REACTION_S):
                self.door_open_at = scene.time
                self.status.notes.append("the parked vehicle opened its door")
                # StopBackVehicles: traffic behind the ego does not drive through the door.
                self.add_blocker(self.ego_lane, self.ego_lane_pos + CAR[0], CAR[0])
            return
        t = scene.time - self.door_open_at
        reach = DOOR_REACH * min(t / DOOR_OPEN_S, 1.0)
        if reach != self.door:
            self.door = reach
            centre = self.car_xy - 0.5 * reach * self.side_dir
            self.props.place(self.car_id, centre[0], centre[1])
            self.props.set_extent(self.car_id, CAR[0], CAR[1] + 0.5 * reach)
        if t >= WAIT_S:
            self.start_flow(scene)


@register_scenario
class InvadingTurn(_Overtaking):
    """Oncoming vehicles in a bend cut into the ego's lane; keep to the right."""

    type_name = "InvadingTurn"
    defaults: ClassVar[dict[str, str]] = {
        "distance": "100",
        "offset": "0.25",  # metres invaded beyond what a half-lane shift gives (see _true_offset)
        "timeout": str(OBSTACLE_TIMEOUT_S),
    }
    differs_from_carla: ClassVar[str] = (
        "invading cars are hidden SUMO vehicles drawn shifted towards the ego lane; they do not steer back"
    )
    key_moment_s: ClassVar[float] = 5.0
    two_ways = True
    stops_at_junction = False
    junction_free = True
    extra_span = 30.0
    distance_range = (90.0, 120.0)
    what = "get through the bend"
    FLOW_GAP = 40.0
    SOURCE_DIST = 30.0
    CHECK_DISTANCE = 50.0
    OFFSET_CONSTANT = 0.7  # scenario-runner: "ideally, half the vehicle lane width"
    BEND = math.radians(15.0)

    def setup(self) -> None:
        lanes = self.ctx.lanes
        distance = self.float_param("distance")
        self.forward_s = self.forward(self.trigger_s, distance + self.SOURCE_DIST, stop_at_junction=False)
        self.end_s = self.forward_s
        lane_f, pos_f, _, _, _ = self.lane_at(self.forward_s)
        lane_t, pos_t, _, _, _ = self.lane_at(self.trigger_s)
        src, src_pos = _adjacent_opposite(lanes, lane_f, pos_f)
        sink, sink_pos = _adjacent_opposite(lanes, lane_t, pos_t)
        if src < 0 or sink < 0:
            raise self.fail("no opposite lane for the invading flow")
        chain = [src]
        while chain[-1] != sink and len(chain) < 30:
            nxt = _next_normal(lanes, chain[-1])
            if nxt < 0 or nxt in chain:
                break
            chain.append(nxt)
        if chain[-1] != sink:
            raise self.fail("the opposite lanes do not lead from the source back to the trigger")
        self.offset = self.float_param("offset")
        self.true_offset = self.offset + 0.5 * float(lanes.width[sink]) - self.OFFSET_CONSTANT
        speed = float(lanes.speed_limit[lane_t])
        self.flow = _OppositeFlow(self, chain, src_pos, sink, sink_pos, speed, (self.FLOW_GAP, self.FLOW_GAP),
                                  "invader", hidden=True, yield_to_ego=False)
        # Cones along the outer edge of the oncoming lane, from 10 m past the source for distance / 2.
        k, d = 0, 10.0
        chain_len = [float(lanes.length[ln]) for ln in chain]
        while d - 10.0 < 0.5 * distance:
            d += 5.0
            ln, p = _advance(chain, chain_len, src_pos, d)
            x, y, yaw = lanes.position_on_lane(ln, p)
            c = np.array([x, y]) + 0.8 * 0.5 * float(lanes.width[ln]) * _right(yaw)
            self.props.add(f"{self.prefix}_cone{k}", AgentKind.CONE, c[0], c[1], yaw, CONE, color=CONE_COLOR)
            k += 1

    def on_trigger(self, scene: Scene) -> None:
        # RemoveRoadLane + ChangeOppositeBehavior(active=False): the scenario owns both lanes.
        self._clear_span = (self.ego_s(scene), self.forward_s)
        self.clear_route_ahead(self.ego_s(scene) + 6.0, self.forward_s)
        self.start_flow(scene)

    def passed(self, scene: Scene) -> bool:
        return self.ego_s(scene) > self.forward_s

    def scripted_agents(self) -> Agents:
        if self.flow is None or self._ended:
            return self.props.agents()
        cars = _shadow_agents(self.ctx.backend, self.flow.alive(), -self.true_offset, AgentKind.VEHICLE,
                              (200, 60, 60))
        return Agents.concat([self.props.agents(), cars])

    @classmethod
    def lane_ok(cls, lanes, lane: int, pos: float) -> bool:
        return (not lanes.is_internal[lane] and _same_left(lanes, lane) < 0
                and _adjacent_opposite(lanes, lane, pos)[0] >= 0)

    @classmethod
    def candidate_triggers(cls, route: Route, lanes: object) -> np.ndarray:
        """Two-way single-lane stretches (opposite lane all along, no real junction up to the longest
        distance + 30 m) whose route turns by at least 15 degrees within the shortest one (a bend)."""
        s = super().candidate_triggers(route, lanes)
        if len(s) == 0:
            return s
        lo = cls.distance_range[0] + cls.extra_span
        yaw = np.unwrap(np.asarray(route.yaw, np.float64))
        k0 = np.searchsorted(route.cum_length, s)
        k1 = np.minimum(np.searchsorted(route.cum_length, s + lo), len(yaw) - 1)
        keep = [abs(float(np.ptp(yaw[a:b + 1]))) >= cls.BEND for a, b in zip(k0, k1, strict=True)]
        return s[np.asarray(keep, np.bool_)]

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        return {
            "distance": {"value": _uniform(rng, *cls.distance_range)},
            "offset": {"value": f"{rng.uniform(0.15, 0.25):.2f}"},
        }


def _advance(chain: list[int], lengths: list[float], pos: float, d: float) -> tuple[int, float]:
    """(lane, position) `d` m after (chain[0], pos) along the lane chain (clamped at its end)."""
    p = pos + d
    for ln, length in zip(chain, lengths, strict=True):
        if p <= length:
            return ln, p
        p -= length
    return chain[-1], lengths[-1]
