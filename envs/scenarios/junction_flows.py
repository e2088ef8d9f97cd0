"""Merging scenarios at junctions and interurban roads: flows of vehicles to turn into, cross or join.

Nine Bench2Drive types share one mechanism. At setup the scenario finds the first real junction (a
node where roads branch or merge) on the route after its trigger point, the approach the flow comes
from, and a lane path for the flow from a source upstream of the junction to a sink past it:

- junction left turns (NonSignalized / Signalized JunctionLeftTurn): oncoming vehicles going straight,
  source 4 x flow_speed metres before the junction, sink 2.5 x flow_speed after it;
- junction right turns: vehicles from the ego's left going straight on their rightmost lane,
  source 5 x flow_speed, sink 3 x flow_speed, the path already populated when the flow starts;
- left turns into a flow (…LeftTurnEnterFlow): oncoming vehicles turning right into the road the ego
  turns into, source 4 x flow_speed, sink 2.5 x flow_speed;
- EnterActorFlow / InterurbanActorFlow / InterurbanAdvancedActorFlow: between the route file's
  `start_actor_flow` and `end_actor_flow` locations (EnterActorFlow on every lane of that direction;
  the advanced type adds a second flow in the other direction of the same road), or, when the
  locations are absent (sampled instances), between an approach and an exit of the junction chosen
  as scenario-runner's Town12/13 layouts intend (the target road of the ego's turn, the oncoming
  road, both directions of the road the ego turns onto).

The flow starts when the ego reaches the trigger: SUMO vehicles enter at the source whenever the last
one has moved a gap drawn from `source_dist_interval` away from it, drive at `flow_speed` ignoring
right of way and lights (as scenario-runner's ActorFlow drives them with a constant velocity and a
traffic manager ignoring lights, signs and vehicles) but keeping their distance to a leader in their
lane (one that SUMO finds overlapping the ego after a collision drives on, so that neither waits for the
other forever), and are removed 2 m before the sink. Background traffic is cleared from the junction,
the ego's entry and the flow's lanes (Bench2Drive's HandleJunctionScenario). The signalised types freeze the
junction's lights: for 5 s the flow's approach is green and the ego's red, then both are green (the
ego yields on its own), every other approach red. The scenario ends when the ego has left the
junction (by 10 m for the junction types) or reached the end of the flow; the flow then stops,
the lights get their program back, and the ego has 240 s from the trigger to get there
(ScenarioTimeoutTest).
"""

from __future__ import annotations

import heapq
import math
import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from envs.route_graph import route_graph
from envs.scenarios.actors import ActorFlow
from envs.scenarios.base import Scenario, ScenarioError, register_scenario
from envs.scenarios.placement import (
    Approach,
    JunctionPass,
    junction_approaches,
    junction_of,
    junction_passes,
    lane_heading,
    normal_successors,
    opposite_lane,
    predecessors,
    wrap,
)
from envs.scene import AgentKind, Route, Scene
from envs.sumo_backend import EGO_ID

FLOW_TIMEOUT_S = 240.0  # scenario-runner's ScenarioTimeout of every flow scenario
GREEN_LIGHT_DELAY_S = 5.0  # the ego's light stays red this long after the trigger (signalised types)
END_DISTANCE = 10.0  # metres past the junction after which the junction types end
SINK_DISTANCE = 2.0  # flow vehicles closer than this to the sink are removed
# SUMO speed mode of flow vehicles: keep a safe speed behind a leader, respect acceleration limits, but
# ignore right of way (outside and inside the junction) and red lights.
FLOW_SPEED_MODE = 1 | 2 | 4 | 32
GHOST_SPEED_MODE = 2 | 4  # the same without keeping a safe speed behind the leader
# Flow vehicles brake for a vehicle in their path within this many metres + 1 s of travel, with this
# deceleration: scenario-runner drives flows with CARLA's BasicAgent-based agents, which stop for
# obstacles in their path (`base_vehicle_threshold` 5 m, `detection_speed_ratio` 1 s).
YIELD_BASE_DISTANCE = 5.0
YIELD_DECEL = 8.0
# Deadlock breaking: after YIELD_PATIENCE_S stopped for a standing ego, a flow vehicle waits only if its
# body would really touch the ego (no extra margin); after YIELD_GIVE_UP_S it drives on regardless.
YIELD_PATIENCE_S, YIELD_GIVE_UP_S = 3.0, 10.0
CLEAR_EVERY_TICKS = 20  # background vehicles are cleared off the flow's lanes this often
TRIGGER_BEFORE = (10.0, 40.0)  # sampler: trigger points this far before the junction entry


# ------------------------------------------------------------------------------------ lane paths
@dataclass
class FlowPath:
    """A flow's way: lanes (normal and junction-internal) in driving order from `source_pos` on the
    first to `sink_pos` on the last."""

    lanes: list[int]
    source_pos: float
    sink_pos: float

    def edges(self, lanes) -> list[str]:
        out: list[str] = []
        for ln in self.lanes:
            if lanes.is_internal[ln]:
                continue
            e = lanes.edge_of_lane[ln]
            if not out or out[-1] != e:
                out.append(e)
        return out

    def samples(self, lanes, step: float = 2.0) -> list[tuple[int, float, float, float, float]]:
        """(lane, position on lane, x, y, distance from the source) every `step` metres along the path."""
        graph = route_graph(lanes)
        out: list[tuple[int, float, float, float, float]] = []
        done = 0.0
        for k, ln in enumerate(self.lanes):
            a = self.source_pos if k == 0 else 0.0
            b = self.sink_pos if k == len(self.lanes) - 1 else float(graph.length[ln])
            for s in np.arange(a, b, step):
                x, y, _ = lanes.position_on_lane(ln, float(s))
                out.append((ln, float(s), x, y, done + float(s) - a))
            done += max(b - a, 0.0)
        return out


def _decision_nodes(lanes) -> set[str]:
    """Junctions where roads branch or merge (not mere joins of two road pieces)."""
    return route_graph(lanes).junctions


def signalized_junctions(lanes) -> set[str]:
    """Junctions with at least one traffic-light controlled link (cached on the LaneGraph)."""
    cache = getattr(lanes, "_signalized_junction_cache", None)
    if cache is None:
        cache = {junction_of(lanes, int(v)) for v in np.asarray(lanes.tl_via_lane) if v >= 0}
        cache.discard(None)
        lanes._signalized_junction_cache = cache
    return cache


def _lane_len(lanes, lane: int) -> float:
    return float(route_graph(lanes).length[lane])


def _normal_preds(lanes, lane: int) -> list[tuple[int, list[int]]]:
    """(normal drivable predecessor, internal lanes between it and `lane`) pairs."""
    out: list[tuple[int, list[int]]] = []
    stack: list[tuple[int, list[int]]] = [(lane, [])]
    while stack:
        q, via = stack.pop()
        for p in predecessors(lanes, q):
            p = int(p)
            if lanes.is_internal[p]:
                if len(via) < 6 and p not in via:
                    stack.append((p, [p, *via]))
            elif lanes.drivable[p]:
                out.append((p, via))
    return out


def upstream_path(lanes, lane: int, distance: float, stop_at: set[str]) -> tuple[list[int], float]:
    """Lanes leading to the end of `lane` (last in the list) from a source `distance` metres before
    that end, following the straightest predecessors, and the source position on the first lane. The
    walk stops at the start of a lane entered through a junction in `stop_at` (as scenario-runner's
    source search stops at the previous junction) or at the network's edge."""
    chain = [lane]
    remaining = float(distance)
    cur = lane
    seen = {lane}
    while True:
        length = _lane_len(lanes, cur)
        if remaining <= length:
            return chain, length - remaining
        preds = [(p, via) for p, via in _normal_preds(lanes, cur) if p not in seen]
        if not preds:
            return chain, 0.0
        yaw = lane_heading(lanes, cur, at_end=False)
        p, via = min(preds, key=lambda pv: abs(wrap(lane_heading(lanes, pv[0], at_end=True) - yaw)))
        if via and junction_of(lanes, via[0]) in stop_at:
            return chain, 0.0
        remaining -= length
        chain = [p, *via, *chain]
        seen.add(p)
        cur = p


def downstream_path(lanes, lane: int, distance: float) -> tuple[list[int], float]:
    """Lanes from `lane` on (straightest successors) covering `distance` metres from its start, and the
    sink position on the last lane (clamped at the network's edge)."""
    chain = [lane]
    remaining = float(distance)
    cur = lane
    seen = {lane}
    while True:
        length = _lane_len(lanes, cur)
        if remaining <= length:
            return chain, remaining
        succ = [(v, n) for v, n in normal_successors(lanes, cur) if lanes.drivable[n] and n not in seen]
        if not succ:
            return chain, max(length - 0.5, 0.0)
        yaw = lane_heading(lanes, cur, at_end=True)
        v, n = min(succ, key=lambda vn: abs(wrap(lane_heading(lanes, vn[1], at_end=False) - yaw)))
        remaining -= length
        chain += ([v] if v >= 0 else []) + [n]
        seen.add(n)
        cur = n


def junction_flow_path(lanes, approach_lane: int, via: int, out_lane: int, source_dist: float,
                       sink_dist: float) -> FlowPath:
    """Flow path from `source_dist` metres before the junction on `approach_lane` through `via` to
    `sink_dist` metres along the exit `out_lane` (and beyond)."""
    up, source_pos = upstream_path(lanes, approach_lane, source_dist, _decision_nodes(lanes))
    down, sink_pos = downstream_path(lanes, out_lane, sink_dist)
    return FlowPath(up + ([via] if via >= 0 else []) + down, source_pos, sink_pos)


def path_between(lanes, start: tuple[int, float], end: tuple[int, float], max_length: float = 1500.0
                 ) -> FlowPath | None:
    """Shortest lane path (no lane changes) from (lane, s) to (lane, s), or None."""
    a, sa = start
    b, sb = end
    if a == b and sb > sa:
        return FlowPath([a], sa, sb)
    best = {a: _lane_len(lanes, a) - sa}
    parent: dict[int, int] = {}
    heap = [(best[a], a)]
    while heap:
        cost, ln = heapq.heappop(heap)
        if cost > best.get(ln, math.inf) or cost > max_length:
            continue
        for nxt in lanes.successors(ln):
            nxt = int(nxt)
            if not lanes.drivable[nxt]:
                continue
            if nxt == b:
                chain = [b, ln]
                while chain[-1] != a:
                    chain.append(parent[chain[-1]])
                return FlowPath(chain[::-1], sa, sb)
            c = cost + _lane_len(lanes, nxt)
            if c < best.get(nxt, math.inf):
                best[nxt] = c
                parent[nxt] = ln
                heapq.heappush(heap, (c, nxt))
    return None


def _lane_at(lanes, xy: np.ndarray) -> tuple[int, float] | None:
    """Nearest normal drivable lane within 4 m of xy and the position on it."""
    for lane, _dist, s, _yaw in lanes.nearest_lanes(float(xy[0]), float(xy[1]), radius=4.0):
        if not lanes.is_internal[lane] and lanes.drivable[lane]:
            return int(lane), float(s)
    return None


def _same_direction_lanes(lanes, lane: int) -> list[int]:
    """Drivable lanes of `lane`'s edge, rightmost first."""
    edge = lanes.edge_of_lane[lane]
    out = [lane]
    for side in (lanes.left, lanes.right):
        cur = int(side[lane])
        while cur >= 0 and lanes.edge_of_lane[cur] == edge:
            if lanes.drivable[cur]:
                out.append(cur)
            cur = int(side[cur])
    return sorted(out, key=lambda ln: int(lanes.lane_index[ln]))


def _left_of(lanes, lane: int, s: float) -> tuple[int, float] | None:
    """CARLA's `get_left_lane`: the lane left of (lane, s) in the same direction, or the oncoming lane
    beside the leftmost one."""
    left = int(lanes.left[lane])
    length = max(_lane_len(lanes, lane), 1e-6)
    if left >= 0 and lanes.drivable[left]:
        return left, s * _lane_len(lanes, left) / length
    x, y, yaw = lanes.position_on_lane(lane, s)
    opp, s_opp = opposite_lane(lanes, x, y, yaw)
    return (opp, s_opp) if opp >= 0 else None


def _exits(ap: Approach, turn: str) -> list[tuple[int, int, str]]:
    return [e for e in ap.exits if e[2] == turn]


# ------------------------------------------------------------------------------------ the flow
class JunctionFlow(ActorFlow):
    """scenario-runner's ActorFlow on a `FlowPath`: a vehicle enters at the source whenever the last one
    is a gap (drawn from `gap_range`) away from it (straight-line distance, as scenario-runner measures
    it); vehicles drive at `speed` ignoring right of way and lights, and are removed `sink_distance`
    metres before the sink. `initial_actors` fills the path at gaps when the flow starts (on normal
    lanes; SUMO cannot insert on junction lanes)."""

    def __init__(self, backend, lanes, prefix: str, path: FlowPath, speed: float,
                 gap_range: tuple[float, float], rng: np.random.Generator, initial_actors: bool = False,
                 sink_distance: float = SINK_DISTANCE) -> None:
        self.lanes = lanes
        self.path = path
        edges = path.edges(lanes)
        if not edges:
            raise ValueError("a flow path needs at least one normal lane")
        first = path.lanes[0]
        super().__init__(backend, prefix, edges, int(lanes.lane_index[first]), path.source_pos, speed,
                         gap_range, rng, kind=int(AgentKind.VEHICLE))
        self.initial_actors = initial_actors
        self.sink_distance = sink_distance
        self.source_xy = np.array(lanes.position_on_lane(first, path.source_pos)[:2])
        last = path.lanes[-1]
        self.sink_edge = lanes.edge_of_lane[last]
        self.sink_pos = path.sink_pos
        self.sink_xy = np.array(lanes.position_on_lane(last, path.sink_pos)[:2])
        self.feed_points = self._feed_points()
        samples = path.samples(lanes, step=1.0)
        self._path_xy = np.array([(x, y) for _l, _s, x, y, _d in samples]).reshape(-1, 2)
        self._path_d = np.array([d for *_r, d in samples])
        self._yielding: dict[str, int] = {}  # vehicle -> ticks spent yielding
        self._braking: set[str] = set()  # vehicles commanded to stop for the ego now
        self.yields = 0  # times a vehicle braked for the ego in its path
        limits = [float(lanes.speed_limit[ln]) for ln in path.lanes if not lanes.is_internal[ln]]
        self.speed_factor = max(1.0, speed / max(min(limits), 0.1)) * 1.05
        self.live: list[str] = []
        self._ghosts: set[str] = set()  # vehicles driving on through an overlapping ego (see _unblock)
        self._pending_ticks = 0
        self._next_gap = float(rng.uniform(*gap_range))

    def _feed_points(self, before: float = 15.0, after: float = 10.0) -> np.ndarray:
        """Points on the lanes from `before` metres upstream of the source (through a junction there)
        to `after` metres past it: where a vehicle would keep the next one from entering."""
        lanes = self.lanes
        first = self.path.lanes[0]
        reach = _lane_len(lanes, first) - self.path.source_pos + before
        chain, pos = upstream_path(lanes, first, reach, set())
        pts = []
        for k, ln in enumerate(chain):
            length = _lane_len(lanes, ln)
            a = pos if k == 0 else 0.0
            b = min(self.path.source_pos + after, length) if ln == first else length
            pts += [lanes.position_on_lane(ln, float(v))[:2] for v in np.arange(a, b, 2.0)]
        return np.array(pts).reshape(-1, 2)

    def source_blocked(self) -> bool:
        """The vehicle last spawned at the source has been waiting to enter for more than 2 ticks."""
        if not self.spawned or self.spawned[-1] not in self.live:
            self._pending_ticks = 0
            return False
        if self.spawned[-1] in self.backend.ls.simulation.getPendingVehicles():
            self._pending_ticks += 1
        else:
            self._pending_ticks = 0
        return self._pending_ticks > 2

    def start(self) -> None:
        if self.active:
            return
        super().start()
        if self.initial_actors:
            self._populate()

    def _spawn(self, edges: list[str], lane_index: int, pos: float) -> str:
        vid = f"{self.prefix}_{len(self.spawned)}"
        ls = self.backend.ls
        # Inserted at the highest safe speed up to the flow speed ("max"): a fixed departure speed could
        # keep a vehicle near the junction waiting forever for the ego (SUMO checks insertions against
        # every vehicle approaching the junction, and the ego ignores right of way there), and a waiting
        # vehicle blocks every later insertion on its edge.
        ls.route.add(f"route_{vid}", edges)
        ls.vehicle.add(vid, f"route_{vid}", typeID="DEFAULT_VEHTYPE", departLane=str(lane_index),
                       departPos=str(max(pos, 0.0)), departSpeed="max")
        ls.vehicle.setMaxSpeed(vid, self.speed)
        if self.kind is not None:
            self.backend.kind_override[vid] = self.kind
        ls.vehicle.setSpeedFactor(vid, self.speed_factor)
        ls.vehicle.setSpeedMode(vid, FLOW_SPEED_MODE)
        ls.vehicle.setLaneChangeMode(vid, 0)
        self.spawned.append(vid)
        self.live.append(vid)
        self._next_gap = float(self.rng.uniform(*self.gap_range))
        return vid

    def _populate(self) -> None:
        """Vehicles along the path at gaps from the source on, inserted far end first so that the last
        one spawned is the one nearest the source (the next spawn measures its gap from it)."""
        lanes = self.lanes
        places: list[tuple[int, float]] = []
        ref = 0.0
        gap = float(self.rng.uniform(*self.gap_range))
        for ln, s, _x, _y, d in self.path.samples(lanes, step=1.0):
            if d - ref < gap or lanes.is_internal[ln] or s < 5.0:
                continue
            places.append((ln, s))
            ref = d
            gap = float(self.rng.uniform(*self.gap_range))
        edges = self.edges
        for ln, s in reversed(places):
            start = edges.index(lanes.edge_of_lane[ln])
            self._spawn(edges[start:], int(lanes.lane_index[ln]), s)

    def _unblock(self, vid: str) -> None:
        """SUMO may take the ego for the leader of a flow vehicle it overlaps (after a collision, the ego
        being moved onto the lane by moveToXY), with a negative gap: the flow vehicle then stops for good
        and the ego, seeing it ahead, too. Such a vehicle drives on disregarding its leader until the
        ego is no longer an overlapping leader."""
        ls = self.backend.ls
        if vid not in self._ghosts and ls.vehicle.getSpeed(vid) > 1.0:
            return
        leader = ls.vehicle.getLeader(vid, 5.0)
        overlapping = bool(leader) and leader[0] == EGO_ID and leader[1] < 0.0
        if overlapping and vid not in self._ghosts:
            ls.vehicle.setSpeedMode(vid, GHOST_SPEED_MODE)
            ls.vehicle.setSpeed(vid, self.speed)  # speed-mode bits bound commanded speeds only
            self._ghosts.add(vid)
            self._yielding.pop(vid, None)
            self._braking.discard(vid)
        elif not overlapping and vid in self._ghosts:
            ls.vehicle.setSpeedMode(vid, FLOW_SPEED_MODE)
            ls.vehicle.setSpeed(vid, -1)
            self._ghosts.discard(vid)

    def _ego_in_path(self, vid: str, ego: np.ndarray, clearance: float = 0.3) -> bool:
        """Whether the ego box (x, y, yaw, half length, half width) lies on the path of `vid` within
        YIELD_BASE_DISTANCE + 1 s of travel ahead of its front, `clearance` m counted as touching."""
        ls = self.backend.ls
        if not len(self._path_xy):
            return False
        p = np.asarray(ls.vehicle.getPosition(vid))
        d_v = float(self._path_d[int(np.argmin(np.hypot(*(self._path_xy - p).T)))])
        reach = YIELD_BASE_DISTANCE + ls.vehicle.getSpeed(vid)
        front = d_v + 0.5 * ls.vehicle.getLength(vid)
        sel = (self._path_d >= front - 1.0) & (self._path_d <= front + reach)
        if not sel.any():
            return False
        rel = self._path_xy[sel] - ego[:2]
        c, s = np.cos(ego[2]), np.sin(ego[2])
        along, across = rel[:, 0] * c + rel[:, 1] * s, -rel[:, 0] * s + rel[:, 1] * c
        margin = 0.5 * ls.vehicle.getWidth(vid) + clearance
        return bool(np.any((np.abs(along) < ego[3] + margin) & (np.abs(across) < ego[4] + margin)))

    def _yield(self, vid: str, ego: np.ndarray | None, ego_speed: float, dt: float) -> None:
        """Brake hard while the ego is in the vehicle's path ahead, drive on once it is not (see
        YIELD_PATIENCE_S for a standing ego that keeps waiting for it)."""
        if vid in self._ghosts:
            return
        ls = self.backend.ls
        waited = self._yielding.get(vid, 0) * dt
        if ego is None or (waited >= YIELD_GIVE_UP_S and ego_speed < 0.1):
            blocked = False
        elif waited >= YIELD_PATIENCE_S and ego_speed < 0.1:
            blocked = self._ego_in_path(vid, ego, clearance=0.0)
        else:
            blocked = self._ego_in_path(vid, ego)
        if blocked:
            self._yielding[vid] = self._yielding.get(vid, 0) + 1
            if vid not in self._braking:  # SUMO keeps a commanded speed: set it on changes only
                ls.vehicle.setDecel(vid, YIELD_DECEL)
                ls.vehicle.setSpeed(vid, 0.0)
                self._braking.add(vid)
                self.yields += 1
        elif vid in self._braking:
            ls.vehicle.setSpeed(vid, -1)
            ls.vehicle.setDecel(vid, ls.vehicletype.getDecel(ls.vehicle.getTypeID(vid)))
            self._braking.discard(vid)
            if waited < YIELD_PATIENCE_S:  # past its patience a vehicle keeps its count (narrow check)
                self._yielding.pop(vid, None)

    def tick(self, ego: np.ndarray | None = None, ego_speed: float = 0.0, dt: float = 0.05) -> None:
        """One step: remove vehicles at the sink, let vehicles yield to the ego box `ego` in their path,
        spawn the next vehicle when the gap allows."""
        ls = self.backend.ls
        if self.live:
            present = set(self.backend.vehicle_ids())
            pending = set(ls.simulation.getPendingVehicles())
            keep: list[str] = []
            for vid in self.live:
                if vid in present:
                    if (ls.vehicle.getRoadID(vid) == self.sink_edge
                            and ls.vehicle.getLanePosition(vid) >= self.sink_pos - self.sink_distance):
                        ls.vehicle.remove(vid)
                        self._ghosts.discard(vid)
                        self._yielding.pop(vid, None)
                        self._braking.discard(vid)
                        continue
                    self._unblock(vid)
                    self._yield(vid, ego, ego_speed, dt)
                    keep.append(vid)
                elif vid in pending:
                    keep.append(vid)
            self.live = keep
        if not self.active or len(self.live) >= self.max_actors:
            return
        if self.spawned and self.spawned[-1] in self.live:
            last = self.spawned[-1]
            if last in ls.simulation.getPendingVehicles():
                return
            p = np.asarray(ls.vehicle.getPosition(last))
            if float(np.hypot(*(p - self.source_xy))) <= self._next_gap:
                return
        self._spawn(self.edges, self.lane_index, self.source_pos)


# ------------------------------------------------------------------------------------ scenarios
class _FlowScenario(Scenario):
    """Shared set-up, triggering, light freezing, clearing and end/timeout logic of the flow types."""

    defaults: ClassVar[dict[str, str]] = {"flow_speed": "20", "source_dist_interval": "25,50"}
    key_moment_s: ClassVar[float] = 4.0
    # Which turn of the ego at the junction the type is made for (sampler); None: any.
    ego_turns: ClassVar[tuple[str, ...]] = ("left",)
    # True: the junction must have traffic lights (frozen as the definition does); False: the sampler
    # places it only at junctions without lights; None: either.
    signalized: ClassVar[bool | None] = None
    initial_actors: ClassVar[bool] = False
    # Flow speed / source gap ranges of Bench2Drive's routes (sample_params).
    speed_range: ClassVar[tuple[float, float]] = (8.0, 11.0)
    gap_low_range: ClassVar[tuple[float, float]] = (15.0, 25.0)
    gap_span_range: ClassVar[tuple[float, float]] = (3.0, 15.0)

    # --------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        self.flow_speed = self.float_param("flow_speed")
        if not self.flow_speed > 0:
            self._fail(f"flow_speed must be positive, got {self.flow_speed:g}")
        self.gap_range = self.interval_param("source_dist_interval")
        if self.gap_range[0] <= 0:
            self._fail(f"source_dist_interval must be positive, got {self.param('source_dist_interval')}")
        self.jp = self._junction_ahead()
        paths = self._flow_paths()
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)
        self.flows = [
            JunctionFlow(self.ctx.backend, self.ctx.lanes, f"sc_flow_{safe}_{k}", p, self.flow_speed,
                         self.gap_range, self.ctx.rng, initial_actors=self.initial_actors)
            for k, p in enumerate(paths)
        ]
        self.end_s = self._end_s()
        self._ended = False
        self._lights_stage = 0
        self._clear_pts = self._flow_clear_points()
        self._light_states: dict[str, tuple[str, str]] = {}
        self._saved_programs: dict[str, str] = {}
        if self.signalized:
            self._prepare_lights()

    def _fail(self, reason: str) -> None:
        raise ScenarioError(f"route {self.ctx.route_id}: scenario {self.name} ({self.type_name}): {reason}")

    def _junction_ahead(self) -> JunctionPass:
        """The first junction (a node where roads branch or merge) the route enters after the trigger."""
        nodes = _decision_nodes(self.ctx.lanes)
        for jp in junction_passes(self.ctx.route, self.ctx.lanes):
            if jp.junction in nodes and jp.exit_s > self.trigger_s + 0.5:
                return jp
        self._fail(f"no junction on the route after the trigger point (at {self.trigger_s:.0f} m)")
        raise AssertionError  # unreachable

    def _approaches(self) -> list[Approach]:
        return junction_approaches(self.ctx.lanes, self.jp)

    def _flow_paths(self) -> list[FlowPath]:
        raise NotImplementedError

    def _end_s(self) -> float:
        return self.jp.exit_s + END_DISTANCE

    def _flow_clear_points(self) -> np.ndarray:
        """Points along the flows' lanes from 15 m before their sources up to the first junction they
        cross (background is kept off them)."""
        lanes = self.ctx.lanes
        nodes = _decision_nodes(lanes)
        pts = []
        for f in self.flows:
            pts.append(f.feed_points)
            for ln, _s, x, y, _d in f.path.samples(lanes, step=2.0):
                if lanes.is_internal[ln] and junction_of(lanes, ln) in nodes:
                    break
                pts.append(np.array([[x, y]]))
        return np.concatenate(pts).reshape(-1, 2) if pts else np.zeros((0, 2))

    # ------------------------------------------------------------------------ lights
    def _prepare_lights(self) -> None:
        lanes = self.ctx.lanes
        ls = self.ctx.backend.ls
        rows = [r for r in range(len(lanes.tl_ids))
                if junction_of(lanes, int(lanes.tl_via_lane[r])) == self.jp.junction]
        if not rows:
            self._fail(f"junction {self.jp.junction} has no traffic lights (use the non-signalized type)")
        ego_edge = lanes.edge_of_lane[self.jp.in_lane]
        source_edges = {lanes.edge_of_lane[ln] for ln in self._source_approach_lanes()}
        for tls in sorted({lanes.tl_ids[r] for r in rows}):
            n = len(ls.trafficlight.getRedYellowGreenState(tls))
            init, flow = ["r"] * n, ["r"] * n
            for r in rows:
                if lanes.tl_ids[r] != tls:
                    continue
                k = int(lanes.tl_link_index[r])
                if not 0 <= k < n:
                    continue
                edge = lanes.edge_of_lane[int(lanes.tl_from_lane[r])]
                if edge in source_edges:
                    init[k] = flow[k] = "G"
                elif edge == ego_edge:
                    flow[k] = "g"  # green, yielding to the flow
            self._light_states[tls] = ("".join(init), "".join(flow))
            self._saved_programs[tls] = ls.trafficlight.getProgram(tls)

    def _source_approach_lanes(self) -> list[int]:
        """The lanes the flows enter the junction from (for the lights)."""
        out = []
        for f in self.flows:
            for k, ln in enumerate(f.path.lanes):
                if self.ctx.lanes.is_internal[ln] and junction_of(self.ctx.lanes, ln) == self.jp.junction:
                    out.append(f.path.lanes[k - 1] if k > 0 else ln)
                    break
        return out

    def _set_lights(self, stage: int) -> None:
        ls = self.ctx.backend.ls
        for tls, states in self._light_states.items():
            ls.trafficlight.setRedYellowGreenState(tls, states[stage])

    def _restore_lights(self) -> None:
        ls = self.ctx.backend.ls
        for tls, program in self._saved_programs.items():
            try:
                ls.trafficlight.setProgram(tls, program)
            except Exception:  # a program that cannot be restored leaves the frozen state
                self.status.notes.append(f"could not restore the program of traffic light {tls}")

    # ---------------------------------------------------------------------- running
    def on_trigger(self, scene: Scene) -> None:
        self._clear_background(scene, initial=True)
        for f in self.flows:
            f.start()
        if self._light_states:
            self._set_lights(0)
            self._lights_stage = 1
        self.status.notes.append(
            f"{len(self.flows)} flow(s) at {self.flow_speed:g} m/s through junction {self.jp.junction}"
        )

    def tick(self, scene: Scene) -> None:
        if not self.status.triggered:
            return
        ego = scene.ego.box()
        for f in self.flows:
            f.tick(ego, float(scene.ego.speed), scene.dt)
        if self._ended:
            return
        if self._lights_stage == 1 and self.seconds_since_trigger(scene) >= GREEN_LIGHT_DELAY_S:
            self._set_lights(1)
            self._lights_stage = 2
        if scene.tick % CLEAR_EVERY_TICKS == 0:
            self._clear_background(scene, initial=False)
        for f in self.flows:
            if f.source_blocked() and len(f.feed_points):  # a background vehicle holds up the source
                self.ctx.backend.remove_vehicles_near(f.feed_points, 3.0)
        passed = self.ego_s(scene) >= self.end_s
        self.check_timeout(scene, passed, FLOW_TIMEOUT_S, "get through the flow scenario")
        if passed or getattr(self, "_timeout_settled", False):
            self._ended = True
            for f in self.flows:
                f.stop()
            if self._light_states:
                self._restore_lights()

    def _clear_background(self, scene: Scene, initial: bool) -> None:
        backend = self.ctx.backend
        if len(self._clear_pts):
            backend.remove_vehicles_near(self._clear_pts, 2.5)
        if not initial:
            return
        lanes = self.ctx.lanes
        if self.jp.junction in lanes.junction_ids:  # clear_junction
            poly = np.asarray(lanes.junction_polygons[lanes.junction_ids.index(self.jp.junction)])
            if len(poly):
                centre = poly.mean(axis=0)
                radius = float(np.max(np.hypot(*(poly - centre).T)))
                backend.remove_vehicles_near(centre[None, :], radius + 2.0)
        # clear_ego_entry: the ego's lane from 10 m ahead of it to the junction
        route = self.ctx.route
        s = np.arange(self.ego_s(scene) + 10.0, self.jp.entry_s, 2.0)
        if len(s):
            idx = np.clip(np.searchsorted(route.cum_length, s), 0, len(route.points) - 1)
            backend.remove_vehicles_near(route.points[idx], 2.5)

    def flow_vehicles(self) -> list[str]:
        """Ids of the flows' vehicles in the simulation (or waiting to enter it)."""
        return [v for f in self.flows for v in f.live]

    # ------------------------------------------------------------------------ sampler
    @classmethod
    def _fits(cls, jp: JunctionPass, lanes) -> bool:
        """Whether an instance placed before `jp` can be set up (type-specific approaches)."""
        return False

    @classmethod
    def candidate_triggers(cls, route: Route, lanes: object) -> np.ndarray:
        nodes = _decision_nodes(lanes)
        lane = np.asarray(route.lane)
        out: list[np.ndarray] = []
        prev_exit = 0.0
        for jp in junction_passes(route, lanes):
            if jp.junction not in nodes:
                continue
            ok = cls.ego_turns is None or jp.turn in cls.ego_turns
            if ok and cls.signalized is not None:
                ok = (jp.junction in signalized_junctions(lanes)) == cls.signalized
            if ok and jp.exit_s + END_DISTANCE + 5.0 <= route.length and cls._fits(jp, lanes):
                s = np.arange(jp.entry_s - TRIGGER_BEFORE[1], jp.entry_s - TRIGGER_BEFORE[0] + 1e-6, 5.0)
                s = s[s >= max(prev_exit + 2.0, 5.0)]
                idx = np.clip(np.searchsorted(route.cum_length, s), 0, len(route.points) - 1)
                li = lane[idx]
                keep = li >= 0
                keep[keep] &= ~np.asarray(lanes.is_internal)[li[keep]]
                out.append(s[keep])
            prev_exit = jp.exit_s
        return np.concatenate(out) if out else np.zeros(0)

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        speed = round(float(rng.uniform(*cls.speed_range)))
        lo = round(float(rng.uniform(*cls.gap_low_range)))
        hi = lo + round(float(rng.uniform(*cls.gap_span_range)))
        return {"flow_speed": {"value": str(speed)}, "source_dist_interval": {"from": str(lo), "to": str(hi)}}


# ------------------------------------------------------------------------- junction types
class _JunctionTurnFlow(_FlowScenario):
    """A flow from one approach of the junction to one exit (scenario-runner's junction turn types)."""

    relation: ClassVar[str] = "opposite"  # where the flow comes from, seen from the ego
    flow_turn: ClassVar[str] = "straight"  # what the flow does at the junction
    source_factor: ClassVar[float] = 4.0  # source distance = factor x flow_speed
    sink_factor: ClassVar[float] = 2.5
    rightmost: ClassVar[bool] = False  # the rightmost lane (right turns); else a random lane

    @classmethod
    def _candidates(cls, approaches: list[Approach]) -> list[Approach]:
        return [a for a in approaches if a.relation == cls.relation and _exits(a, cls.flow_turn)]

    @classmethod
    def _fits(cls, jp: JunctionPass, lanes) -> bool:
        return bool(cls._candidates(junction_approaches(lanes, jp)))

    def _flow_paths(self) -> list[FlowPath]:
        lanes = self.ctx.lanes
        cands = self._candidates(self._approaches())
        if not cands:
            self._fail(f"junction {self.jp.junction} has no approach {self.relation.replace('_', ' ')} "
                       f"the ego with a lane going {self.flow_turn}")
        if self.rightmost:
            ap = min(cands, key=lambda a: int(lanes.lane_index[a.lane]))
        else:
            ap = cands[int(self.ctx.rng.integers(len(cands)))]
        exits = _exits(ap, self.flow_turn)
        # prefer the exit onto the ego's road out of the junction (the lane it merges into)
        out_edge = lanes.edge_of_lane[self.jp.out_lane]
        via, out, _ = min(exits, key=lambda e: (lanes.edge_of_lane[e[1]] != out_edge, lanes.lane_index[e[1]]))
        return [junction_flow_path(lanes, ap.lane, via, out, self.source_factor * self.flow_speed,
                                   self.sink_factor * self.flow_speed)]


@register_scenario
class SignalizedJunctionLeftTurn(_JunctionTurnFlow):
    """Turn left at a signalised junction while oncoming vehicles go straight through it."""

    type_name = "SignalizedJunctionLeftTurn"
    signalized = True
    speed_range = (9.0, 11.0)
    differs_from_carla = ("SUMO flow (no constant-velocity physics); lights frozen through SUMO link states, "
                          "pedestrian signals red while frozen")


@register_scenario
class NonSignalizedJunctionLeftTurn(_JunctionTurnFlow):
    """Turn left at an unsignalised junction while oncoming vehicles go straight through it."""

    type_name = "NonSignalizedJunctionLeftTurn"
    signalized = False
    speed_range = (8.0, 11.0)
    differs_from_carla = ("SUMO flow ignoring right of way; other entries are not held back (no "
                          "stop_entries), lights of a signalised junction keep running")


@register_scenario
class SignalizedJunctionRightTurn(_JunctionTurnFlow):
    """Turn right at a signalised junction into a flow coming straight from the ego's left."""

    type_name = "SignalizedJunctionRightTurn"
    ego_turns = ("right",)
    signalized = True
    relation = "from_left"
    source_factor = 5.0
    sink_factor = 3.0
    rightmost = True
    initial_actors = True
    speed_range = (10.0, 14.0)
    gap_span_range = (2.0, 18.0)
    differs_from_carla = ("SUMO flow; initial vehicles only on normal lanes (none inside junctions); lights "
                          "frozen through SUMO link states")


@register_scenario
class NonSignalizedJunctionRightTurn(_JunctionTurnFlow):
    """Turn right at an unsignalised junction into a flow coming straight from the ego's left."""

    type_name = "NonSignalizedJunctionRightTurn"
    ego_turns = ("right",)
    signalized = False
    relation = "from_left"
    source_factor = 5.0
    sink_factor = 3.0
    rightmost = True
    initial_actors = True
    speed_range = (8.0, 14.0)
    differs_from_carla = ("SUMO flow ignoring right of way; initial vehicles only on normal lanes; other "
                          "entries are not held back")


@register_scenario
class SignalizedJunctionLeftTurnEnterFlow(_JunctionTurnFlow):
    """Turn left at a signalised junction into the road oncoming vehicles turn right into."""

    type_name = "SignalizedJunctionLeftTurnEnterFlow"
    signalized = True
    flow_turn = "right"
    speed_range = (8.0, 10.0)
    gap_span_range = (3.0, 10.0)
    differs_from_carla = ("SUMO flow, slowed by SUMO's turn speed inside the junction; lights frozen "
                          "through SUMO link states")


@register_scenario
class NonSignalizedJunctionLeftTurnEnterFlow(_JunctionTurnFlow):
    """Turn left at an unsignalised junction into the road oncoming vehicles turn right into."""

    type_name = "NonSignalizedJunctionLeftTurnEnterFlow"
    signalized = False
    flow_turn = "right"
    speed_range = (8.0, 10.0)
    gap_span_range = (5.0, 14.0)
    differs_from_carla = ("SUMO flow, slowed by SUMO's turn speed inside the junction; other entries are "
                          "not held back")


# ------------------------------------------------------------------ located (actor-flow) types
class _LocatedFlow(_FlowScenario):
    """Flows between the route file's start_actor_flow and end_actor_flow locations (CARLA coordinates);
    without them (sampled instances) the flows are derived from the junction ahead."""

    defaults: ClassVar[dict[str, str]] = {
        "flow_speed": "10",
        "source_dist_interval": "20,50",
        "start_actor_flow": "",
        "end_actor_flow": "",
    }
    source_factor: ClassVar[float] = 4.0
    sink_factor: ClassVar[float] = 2.5

    def _located(self) -> tuple[tuple[int, float], tuple[int, float]] | None:
        start, end = self.param("start_actor_flow").strip(), self.param("end_actor_flow").strip()
        if not start and not end:
            return None
        if not start or not end:
            self._fail("start_actor_flow and end_actor_flow must be given together")
        a = _lane_at(self.ctx.lanes, self.location_param("start_actor_flow"))
        b = _lane_at(self.ctx.lanes, self.location_param("end_actor_flow"))
        if a is None or b is None:
            which = "start_actor_flow" if a is None else "end_actor_flow"
            self._fail(f"{which} is not on a drivable lane of this map")
        return a, b

    def _path(self, a: tuple[int, float], b: tuple[int, float]) -> FlowPath:
        path = path_between(self.ctx.lanes, a, b)
        if path is None:
            lanes = self.ctx.lanes
            self._fail(f"no lane path from {lanes.lane_ids[a[0]]} to {lanes.lane_ids[b[0]]} for the flow")
        return path

    def _derived_path(self, ap: Approach, exits: list[tuple[int, int, str]]) -> FlowPath:
        via, out, _ = exits[0]
        return junction_flow_path(self.ctx.lanes, ap.lane, via, out, self.source_factor * self.flow_speed,
                                  self.sink_factor * self.flow_speed)

    def _route_s_of(self, xy: np.ndarray, max_lateral: float = 4.0) -> float | None:
        """Route distance of the point nearest xy, if the route passes within `max_lateral` of it."""
        route = self.ctx.route
        d = np.hypot(route.points[:, 0] - xy[0], route.points[:, 1] - xy[1])
        k = int(np.argmin(d))
        return float(route.cum_length[k]) if d[k] <= max_lateral else None


def _onto_road_approaches(lanes, jp: JunctionPass, approaches: list[Approach]
                          ) -> list[tuple[Approach, list[tuple[int, int, str]]]]:
    """Approaches (not the ego's) with straight exits onto the ego's exit road."""
    out_edge = lanes.edge_of_lane[jp.out_lane]
    out = []
    for ap in approaches:
        if ap.relation == "same":
            continue
        ex = [e for e in ap.exits if e[2] == "straight" and lanes.edge_of_lane[e[1]] == out_edge]
        if ex:
            out.append((ap, ex))
    return out


@register_scenario
class EnterActorFlow(_LocatedFlow):
    """Turn into a road with a flow on every lane of the ego's target direction and merge into it."""

    type_name = "EnterActorFlow"
    ego_turns = ("left", "right")
    initial_actors = True
    speed_range = (12.0, 19.0)
    gap_low_range = (17.0, 30.0)
    gap_span_range = (4.0, 22.0)
    differs_from_carla = ("SUMO flows; initial vehicles only on normal lanes (CARLA also fills the "
                          "junction); without locations the flow comes straight onto the ego's exit road")

    def _flow_paths(self) -> list[FlowPath]:
        lanes = self.ctx.lanes
        located = self._located()
        if located is not None:
            (a, sa), (b, sb) = located
            paths = []
            for la, lb in zip(_same_direction_lanes(lanes, a), _same_direction_lanes(lanes, b), strict=False):
                p = path_between(lanes, (la, sa * _lane_len(lanes, la) / _lane_len(lanes, a)),
                                 (lb, sb * _lane_len(lanes, lb) / _lane_len(lanes, b)))
                if p is not None:
                    paths.append(p)
            if not paths:
                self._fail(f"no lane path from {lanes.lane_ids[a]} to {lanes.lane_ids[b]} for the flow")
            return paths
        cands = _onto_road_approaches(lanes, self.jp, self._approaches())
        if not cands:
            self._fail(f"junction {self.jp.junction} has no approach going straight onto the ego's exit road")
        edge = lanes.edge_of_lane[cands[0][0].lane]  # every lane of that approach road
        return [self._derived_path(ap, ex) for ap, ex in cands if lanes.edge_of_lane[ap.lane] == edge]

    def _end_s(self) -> float:
        # InTriggerDistanceToLocation(sink, 2 m): the ego reaches the end of a flow
        s = [self._route_s_of(f.sink_xy) for f in self.flows]
        s = [v for v in s if v is not None and v > self.trigger_s]
        return min(s) - SINK_DISTANCE if s else self.jp.exit_s + END_DISTANCE

    @classmethod
    def _fits(cls, jp: JunctionPass, lanes) -> bool:
        return bool(_onto_road_approaches(lanes, jp, junction_approaches(lanes, jp)))


@register_scenario
class InterurbanActorFlow(_LocatedFlow):
    """Leave the road by turning left across a flow of vehicles."""

    type_name = "InterurbanActorFlow"
    speed_range = (15.0, 16.0)
    gap_low_range = (40.0, 55.0)
    gap_span_range = (25.0, 55.0)
    differs_from_carla = ("SUMO flow; without start/end locations the flow is the oncoming traffic going "
                          "straight (Town12/13 interurban layouts are not available)")

    def _flow_paths(self) -> list[FlowPath]:
        located = self._located()
        if located is not None:
            return [self._path(*located)]
        cands = [a for a in self._approaches() if a.relation == "opposite" and _exits(a, "straight")]
        if not cands:
            self._fail(f"junction {self.jp.junction} has no oncoming approach going straight")
        ap = cands[int(self.ctx.rng.integers(len(cands)))]
        return [self._derived_path(ap, _exits(ap, "straight"))]

    def _end_s(self) -> float:
        return self.jp.exit_s  # WaitEndIntersection

    def _clear_background(self, scene: Scene, initial: bool) -> None:
        super()._clear_background(scene, initial)
        if initial:  # remove_entries: also the lane entering the junction from the ego's exit road
            lanes = self.ctx.lanes
            x, y, yaw = lanes.position_on_lane(self.jp.out_lane, 8.0)
            opp, s = opposite_lane(lanes, x, y, yaw)
            if opp >= 0:
                pts = [lanes.position_on_lane(opp, float(v))[:2] for v in np.arange(s, s + 40.0, 2.0)]
                self.ctx.backend.remove_vehicles_near(np.array(pts), 2.5)

    @classmethod
    def _fits(cls, jp: JunctionPass, lanes) -> bool:
        return any(a.relation == "opposite" and _exits(a, "straight") for a in junction_approaches(lanes, jp))


@register_scenario
class InterurbanAdvancedActorFlow(_LocatedFlow):
    """Turn left onto a road, crossing the flow from the left and merging into the flow from the right."""

    type_name = "InterurbanAdvancedActorFlow"
    ignored = ("direction",)  # in some Bench2Drive route files; scenario-runner does not read it
    speed_range = (15.0, 18.0)
    gap_low_range = (36.0, 50.0)
    gap_span_range = (30.0, 55.0)
    differs_from_carla = ("SUMO flows; the second flow's ends are the lanes left of the first's (oncoming "
                          "lane in SUMO); derived from the junction when the locations are absent")

    def _flow_paths(self) -> list[FlowPath]:
        lanes = self.ctx.lanes
        located = self._located()
        if located is not None:
            (a, sa), (b, sb) = located
            first = self._path((a, sa), (b, sb))
            src2, sink2 = _left_of(lanes, b, sb), _left_of(lanes, a, sa)
            if src2 is None or sink2 is None:
                self._fail("no lane left of the flow's ends for the second flow")
            return [first, self._path(src2, sink2)]
        aps = self._approaches()
        crossing = [a for a in aps if a.relation == "from_left" and _exits(a, "straight")]
        merging = [m for m in _onto_road_approaches(lanes, self.jp, aps) if m[0].relation == "from_right"]
        if not crossing or not merging:
            self._fail(f"junction {self.jp.junction} lacks a straight approach from the left and one from "
                       f"the right onto the ego's exit road")
        ap1 = min(crossing, key=lambda a: int(lanes.lane_index[a.lane]))
        ap2, ex2 = min(merging, key=lambda m: int(lanes.lane_index[m[0].lane]))
        return [self._derived_path(ap1, _exits(ap1, "straight")), self._derived_path(ap2, ex2)]

    def _end_s(self) -> float:
        # WaitUntilInFrontPosition(second flow's sink)
        s = self._route_s_of(self.flows[-1].sink_xy)
        return s if s is not None and s > self.trigger_s else self.jp.exit_s + END_DISTANCE

    @classmethod
    def _fits(cls, jp: JunctionPass, lanes) -> bool:
        aps = junction_approaches(lanes, jp)
        return any(a.relation == "from_left" and _exits(a, "straight") for a in aps) and any(
            ap.relation == "from_right" for ap, _ in _onto_road_approaches(lanes, jp, aps)
        )

