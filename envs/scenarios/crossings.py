"""Emergency-brake scenarios with walkers and cyclists crossing the ego's path, and control loss.

Following Bench2Drive's scenario-runner (object_crash_vehicle.py, object_crash_intersection.py,
pedestrian_crossing.py, cross_bicycle_flow.py, control_loss.py):

- DynamicObjectCrossing: a walker hidden behind a blocker prop on the sidewalk `distance` m after the trigger
  crosses when the ego is within its reaction time of the crossing point.
- ParkingCrossingPedestrian: the same with a parked car beside the ego lane as the blocker.
- PedestrianCrossing: three walkers cross the road just before the junction ahead.
- VehicleTurningRoute / VehicleTurningRoutePedestrian: a bicycle / walker crosses the road the route turns
  into.
- CrossingBicycleFlow: a flow of SUMO bicycles crosses the junction ahead, ignoring lights and priority.
- ControlLoss: steering and throttle noise while the ego passes three debris spots after the trigger.

Walkers and cyclists that step onto the road are scripted (`ScriptedActors`): SUMO's walkers keep to
sidewalks and crossings. They wait, visible, at their start until the scenario triggered and the ego's
time to reach the crossing point drops below the definition's reaction time (or it is closer than the
minimum trigger distance), then move at the definition's speed and vanish once across, as scenario-runner
destroys them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from envs.scenarios.actors import ActorFlow, ScriptedActors
from envs.scenarios.base import Scenario, ScenarioError, register_scenario
from envs.scenarios.placement import (
    JunctionPass,
    junction_approaches,
    junction_of,
    junction_passes,
    normal_successors,
    turn_direction,
    upstream,
    wrap,
)
from envs.scene import AgentKind, Agents, Route, Scene

NOMINAL_SIDEWALK = 2.0  # m, width assumed where the network has no sidewalk lane beside the road
WALKER_COLOR = (70, 90, 150)
BICYCLE_COLOR = (190, 110, 30)
PARKED_COLOR = (120, 120, 130)

# Blocker props of DynamicObjectCrossing: (kind, half length along the road, half width across it, height).
# Scenario-runner turns props 90 degrees to the lane, so their broad side faces the approaching ego.
BLOCKERS: dict[str, tuple[int, float, float, float]] = {
    "static.prop.vendingmachine": (AgentKind.STATIC, 0.45, 0.55, 1.9),
    "static.prop.advertisement": (AgentKind.STATIC, 0.2, 1.0, 2.3),
    "static.prop.container": (AgentKind.STATIC, 0.6, 0.9, 1.4),
    "static.prop.foodcart": (AgentKind.STATIC, 0.8, 1.2, 2.2),
    "static.prop.busstoplb": (AgentKind.STATIC, 0.8, 1.6, 2.6),
    "static.prop.haybalelb": (AgentKind.STATIC, 0.6, 0.65, 1.2),
}
DEFAULT_PROP = (AgentKind.STATIC, 0.5, 0.6, 1.5)
PARKED_CAR = (AgentKind.PARKED_VEHICLE, 2.4, 1.0, 1.5)
SUMO_CAR_HALF_LENGTH = 2.5  # SUMO's default passenger car is 5 m long


def blocker_shape(model: str) -> tuple[int, float, float, float]:
    """(kind, half length along the road, half width across it, height) of a blocker blueprint."""
    if model.startswith("vehicle."):
        return PARKED_CAR
    if model in BLOCKERS:
        return BLOCKERS[model]
    if model.startswith("static."):
        return DEFAULT_PROP
    raise ValueError(f"blocker_model must be a 'static.prop.*' or 'vehicle.*' blueprint, got {model!r}")


# ------------------------------------------------------------------------------------- geometry
@dataclass
class RoadSide:
    """The road's cross-section on one side of a lane at one point."""

    point: np.ndarray  # lane centre point
    yaw: float  # lane heading there
    out: np.ndarray  # unit vector pointing away from the lane towards this side
    edge: float  # m from the lane centre to the carriageway's edge on this side
    sidewalk: float  # m from the lane centre to the centre of the sidewalk beyond that edge
    sidewalk_width: float
    neighbour: int  # same-direction drivable lane next to the lane on this side (-1: none)
    neighbour_offset: float  # m from the lane centre to that neighbour's centre
    oncoming: float = 0.0  # m of oncoming lanes between the lane and this side's edge

    def at(self, lateral: float, along: float = 0.0) -> np.ndarray:
        """World point `lateral` m towards this side and `along` m forward of the lane point."""
        fwd = np.array([math.cos(self.yaw), math.sin(self.yaw)])
        return self.point + self.out * lateral + fwd * along

    @property
    def towards_road(self) -> float:
        """Heading from this side's sidewalk straight across the road."""
        return math.atan2(-self.out[1], -self.out[0])


def road_side(lanes, lane: int, xy: np.ndarray, yaw: float, side: str, radius: float = 25.0) -> RoadSide:
    """Where the carriageway ends and the sidewalk lies on `side` ('left' / 'right') of `lane` at `xy`.

    Walks outwards over the lanes parallel to `lane` (drivable lanes of either direction, bike or other
    lanes) while they adjoin without a gap; the first sidewalk lane met gives the sidewalk, otherwise a
    nominal 2 m sidewalk is assumed beyond the last lane."""
    fwd = np.array([math.cos(yaw), math.sin(yaw)])
    left = np.array([-fwd[1], fwd[0]])
    out = left if side == "left" else -left
    neighbour = int(lanes.left[lane] if side == "left" else lanes.right[lane])
    found: list[tuple[float, float, int, float]] = []
    for cand, _dist, s, lyaw in lanes.nearest_lanes(float(xy[0]), float(xy[1]), radius=radius,
                                                     drivable_only=False):
        if cand == lane or lanes.is_internal[cand] or lanes.is_crossing[cand]:
            continue
        if abs(math.cos(lyaw - yaw)) < 0.85:
            continue
        px, py, _ = lanes.position_on_lane(cand, s)
        rel = np.array([px, py]) - xy
        if abs(float(rel @ fwd)) > 3.0:
            continue
        off = float(rel @ out)
        if off > 0.3:
            found.append((off, float(lanes.width[cand]), int(cand), math.cos(lyaw - yaw)))
    found.sort()
    outer = 0.5 * float(lanes.width[lane])
    sidewalk, sw_width = -1.0, NOMINAL_SIDEWALK
    neighbour_off = outer + 1.75
    oncoming = 0.0
    for off, w, cand, ldir in found:
        if off - 0.5 * w > outer + 1.0:
            break  # a gap: another road
        if cand == neighbour:
            neighbour_off = off
        if lanes.is_sidewalk[cand]:
            sidewalk, sw_width = off, w
            break
        if lanes.drivable[cand] and ldir < 0:
            oncoming += w
        outer = max(outer, off + 0.5 * w)
    if sidewalk < 0:
        sidewalk = outer + 0.5 * sw_width
    return RoadSide(np.asarray(xy, np.float64), float(yaw), out, float(outer), float(sidewalk),
                    float(sw_width), neighbour, float(neighbour_off), float(oncoming))


def route_normal_index(route: Route, lanes, s: float) -> int:
    """Dense route index at distance s, moved forward out of a junction (-1: none before the route's end)."""
    idx = int(np.clip(np.searchsorted(route.cum_length, s), 0, len(route.points) - 1))
    while idx < len(route.points) and (route.lane[idx] < 0 or lanes.is_internal[route.lane[idx]]):
        idx += 1
    return idx if idx < len(route.points) else -1


URBAN_SPEED = 70.0 / 3.6  # m/s: walkers and cyclists are only sampled on roads up to this limit


def urban(route: Route, lanes, s: np.ndarray, ahead: float = 0.0) -> np.ndarray:
    """Mask of route distances s whose lanes at s and at s + `ahead` have urban speed limits."""
    ok = np.ones(len(s), np.bool_)
    for extra in {0.0, ahead}:
        idx = np.clip(np.searchsorted(route.cum_length, s + extra), 0, len(route.points) - 1)
        lane = np.asarray(route.lane)[idx]
        ok &= (lane < 0) | (np.asarray(lanes.speed_limit)[np.maximum(lane, 0)] <= URBAN_SPEED + 1e-6)
    return ok


def is_intersection(lanes, jp: JunctionPass) -> bool:
    """A junction other roads cross (not a highway merge or split, where every approach runs alongside)."""
    return any(a.relation != "same" for a in junction_approaches(lanes, jp))


def junction_triggers(route: Route, lanes, ok=None, before: tuple[float, float] = (10.0, 40.0),
                      after: float = 30.0) -> np.ndarray:
    """Route distances 10-40 m (`before`) before the entry of each intersection on an urban road the route
    passes for which `ok(jp)` holds, on normal lanes, with at least `after` m of route beyond the junction."""
    out: list[float] = []
    lane_arr = np.asarray(route.lane)
    prev_exit = -math.inf
    for jp in junction_passes(route, lanes):
        earlier, prev_exit = prev_exit, jp.exit_s
        if lanes.speed_limit[jp.in_lane] > URBAN_SPEED + 1e-6 or not is_intersection(lanes, jp):
            continue
        if ok is not None and not ok(jp):
            continue
        if jp.exit_s + after > route.length:
            continue
        for d in np.arange(before[0], before[1] + 1e-6, 5.0):
            s = jp.entry_s - d
            if s < 5.0 or s < earlier + 2.0:  # the ego must meet this junction first
                continue
            idx = int(np.clip(np.searchsorted(route.cum_length, s), 0, len(route.points) - 1))
            ln = int(lane_arr[idx])
            if ln >= 0 and not lanes.is_internal[ln]:
                out.append(float(s))
    return np.unique(np.asarray(out, np.float64))


# ---------------------------------------------------------------------------- crossing actors
@dataclass
class Crosser:
    """A scripted walker / cyclist waiting to cross."""

    actor_id: str
    heading: float
    speed: float
    distance: float
    idle_s: float = 0.0
    state: str = "waiting"  # waiting -> idle -> crossing -> gone
    wait_ticks: int = 0


class _CrossingScenario(Scenario):
    """Shared machinery: scripted crossers, the reaction-time / distance start condition, clearing traffic."""

    reaction_time: ClassVar[float] = 2.0
    min_trigger_dist: ClassVar[float] = 6.0
    key_moment_s = 4.0
    # Extra seconds of warning for a crosser that starts beyond oncoming lanes (scenario-runner only
    # starts walkers next to the ego's own carriageway): the time it needs to cross them.
    lead_time: float = 0.0

    def setup(self) -> None:
        self.actors = ScriptedActors()
        self.crossers: list[Crosser] = []
        self.collision_xy = np.zeros(2)
        self.collision_s = 0.0
        self.started_tick: int | None = None
        self.place()
        if not self.crossers:
            raise ScenarioError(f"route {self.ctx.route_id}: scenario {self.name} placed no crossing actor")
        side = getattr(self, "side", None)
        if side is not None and side.oncoming > 0:
            self.lead_time = side.oncoming / min(c.speed for c in self.crossers)

    def place(self) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------------- placement helpers
    def lane_point(self, s: float, what: str) -> tuple[int, float, int, np.ndarray, float]:
        """(dense index, route distance, lane, point, yaw) of the route's first normal-lane point at or
        after route distance s."""
        route = self.ctx.route
        if s > route.length - 2.0:
            raise self.fail(f"the {what} ({s:.0f} m) lies beyond the route's end ({route.length:.0f} m)")
        idx = route_normal_index(route, self.ctx.lanes, s)
        if idx < 0:
            raise self.fail(f"no normal lane for the {what} after {s:.0f} m")
        return (idx, float(route.cum_length[idx]), int(route.lane[idx]), route.points[idx].astype(np.float64),
                float(route.yaw[idx]))

    def sides_at(self, s: float, side: str, what: str) -> tuple[RoadSide, RoadSide, float, int]:
        """(`side` of the road, the opposite side, route distance, lane) at the route's first normal-lane
        point at or after s."""
        _, s_at, lane, p, yaw = self.lane_point(s, what)
        other = "left" if side == "right" else "right"
        lanes = self.ctx.lanes
        return road_side(lanes, lane, p, yaw, side), road_side(lanes, lane, p, yaw, other), s_at, lane

    def add_crosser(self, actor_id: str, kind: int, xy: np.ndarray, heading: float, speed: float,
                    distance: float, idle_s: float = 0.0, color: tuple[int, int, int] = WALKER_COLOR) -> None:
        self.actors.add(actor_id, kind, float(xy[0]), float(xy[1]), heading, color=color)
        self.crossers.append(Crosser(actor_id, heading, speed, distance, idle_s))

    @staticmethod
    def across_distance(start_lateral: float, far_lateral: float, angle: float, base: float) -> float:
        """Metres to walk: the definition's `base`, extended so the actor ends beyond the far road edge
        (`far_lateral` m across from its start lane reference), walking `angle` off the perpendicular."""
        need = (start_lateral + far_lateral + 0.5) / max(math.cos(angle), 0.2)
        return max(base, need)

    # ---------------------------------------------------------------------------------- running
    def on_trigger(self, scene: Scene) -> None:
        # scenario-runner's LeaveSpaceInFront: no background vehicle between the ego and the crossing.
        self.clear_route(self.ego_s(scene), self.collision_s + 10.0)

    def clear_route(self, s0: float, s1: float, radius: float = 2.5) -> None:
        route = self.ctx.route
        k0, k1 = np.searchsorted(route.cum_length, [s0, s1])
        pts = route.points[k0: max(k1, k0 + 1): 10]
        if len(pts):
            self.ctx.backend.remove_vehicles_near(pts, radius)

    def ego_close(self, scene: Scene) -> bool:
        """InTimeToArrivalToLocation(reaction_time) or InTriggerDistanceToLocation(min_trigger_dist)."""
        d = math.hypot(scene.ego.x - self.collision_xy[0], scene.ego.y - self.collision_xy[1])
        v = float(scene.ego.speed)
        return d < self.min_trigger_dist or (v > 0.1 and d / v < self.reaction_time + self.lead_time)

    def on_start(self, scene: Scene) -> None:
        """The crossers start (scenario-runner's LeaveCrossingSpace: clear traffic at the crossing)."""
        self.ctx.backend.remove_vehicles_near(self.collision_xy[None, :], 8.0)

    def tick(self, scene: Scene) -> None:
        if not hasattr(self, "actors"):
            return
        if self.status.triggered and self.started_tick is None and self.ego_close(scene):
            self.started_tick = scene.tick
            self.on_start(scene)
            self.status.notes.append(f"adversary starts crossing at t={scene.time:.2f} s")
            for c in self.crossers:
                c.state = "idle"
        for c in self.crossers:
            if c.state == "idle":
                if c.wait_ticks * scene.dt >= c.idle_s:
                    c.state = "crossing"
                    self.actors.move(c.actor_id, c.heading, c.speed, c.distance)
                c.wait_ticks += 1
        self.actors.advance(scene.dt)
        for c in self.crossers:
            if c.state == "crossing" and not self.actors.moving(c.actor_id):
                c.state = "gone"
                self.actors.remove(c.actor_id)

    def scripted_agents(self) -> Agents:
        actors = getattr(self, "actors", None)
        return actors.agents() if actors is not None else Agents()

    @property
    def started(self) -> bool:
        return getattr(self, "started_tick", None) is not None


def _check_angle(sc: Scenario) -> float:
    a = sc.float_param("crossing_angle")
    if abs(a) > 90.0:
        raise ScenarioError(f"route {sc.ctx.route_id}: scenario {sc.name} ({sc.type_name}) crossing_angle "
                            f"must be within [-90, 90] degrees for the walker to cross the road, got {a:g}")
    return a


# ------------------------------------------------------------------------------------- types
@register_scenario
class DynamicObjectCrossing(_CrossingScenario):
    """A walker hidden behind a blocker on the sidewalk `distance` m ahead crosses in front of the ego."""

    type_name = "DynamicObjectCrossing"
    defaults: ClassVar[dict[str, str]] = {
        "distance": "12",
        "direction": "right",
        "blocker_model": "static.prop.vendingmachine",
        "crossing_angle": "0",
    }
    differs_from_carla = ("blocker is a box of the prop's rough extent and stays; the walker vanishes past "
                          "the far road edge and starts earlier when it must first cross oncoming lanes")
    key_moment_s = 4.5
    SPEED = 2.0  # m/s
    BLOCKER_SHIFT = 1.5  # m beyond the sidewalk centre (scenario-runner's k = 1.5)
    WALKER_SHIFT = 1.2

    def place(self) -> None:
        direction = self.side_param("direction")
        angle = _check_angle(self)
        try:
            kind, hl, hw, h = blocker_shape(self.param("blocker_model"))
        except ValueError as exc:
            raise self.fail(str(exc)) from None
        self.reaction_time = 2.1 + 0.1 * math.floor(angle / 5.0)
        side, far, self.collision_s, _ = self.sides_at(self.trigger_s + self.float_param("distance"),
                                                        direction, "crossing point")
        self.collision_xy = side.point
        self.side = side
        blocker_xy = side.at(side.sidewalk + self.BLOCKER_SHIFT)
        self.blocker_id = f"sc_blocker_{self.name}"
        self.actors.add(self.blocker_id, kind, blocker_xy[0], blocker_xy[1], side.yaw, extent=(hl, hw, h),
                        color=(90, 90, 90) if kind == AgentKind.STATIC else PARKED_COLOR)
        lateral = side.sidewalk + self.WALKER_SHIFT
        walker_xy = side.at(lateral, hl + 0.5)
        sign = 1.0 if direction == "right" else -1.0
        heading = wrap(side.towards_road + sign * math.radians(angle))  # turned towards the ego
        collision_dist = float(np.hypot(*(walker_xy - side.point)))
        dist = self.across_distance(lateral, far.edge, math.radians(angle), 2.0 * collision_dist)
        self.walker_id = f"sc_walker_{self.name}"
        self.add_crosser(self.walker_id, AgentKind.PEDESTRIAN, walker_xy, heading, self.SPEED, dist)

    @classmethod
    def candidate_triggers(cls, route: Route, lanes) -> np.ndarray:
        s = super().candidate_triggers(route, lanes)
        s = s[s + 70.0 < route.length]
        return s[urban(route, lanes, s, ahead=45.0)]

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        models = ["static.prop.advertisement", "static.prop.container", "static.prop.foodcart",
                  "static.prop.busstoplb", "static.prop.haybalelb", "vehicle.tesla.model3"]
        weights = np.array([84, 99, 57, 57, 33, 21], np.float64)
        return {
            "distance": {"value": str(int(rng.integers(30, 61)))},
            "direction": {"value": "right" if rng.random() < 0.9 else "left"},
            "blocker_model": {"value": models[int(rng.choice(len(models), p=weights / weights.sum()))]},
            "crossing_angle": {"value": str(int(rng.integers(0, 21)))},
        }


@register_scenario
class ParkingCrossingPedestrian(_CrossingScenario):
    """A walker steps out in front of a car parked beside the ego lane `distance` m after the trigger."""

    type_name = "ParkingCrossingPedestrian"
    defaults: ClassVar[dict[str, str]] = {"distance": "12", "direction": "right", "crossing_angle": "0"}
    differs_from_carla = ("the parked car is a SUMO parked vehicle when a same-direction lane lies beside "
                          "the ego lane, else a scripted parked car on the kerb (no parking lanes in SUMO)")
    key_moment_s = 4.5
    SPEED = 2.0
    WALK = 8.0  # m, scenario-runner's crossing distance (a one-lane road)

    def place(self) -> None:
        direction = self.side_param("direction")
        angle = _check_angle(self)
        self.reaction_time = 2.15 + 0.1 * math.floor(angle / 5.0)
        side, far, s_block, lane = self.sides_at(self.trigger_s + self.float_param("distance"), direction,
                                                 "parked car")
        lanes = self.ctx.lanes
        lane_w = float(lanes.width[lane])
        self.parked_id = f"sc_parked_{self.name}"
        if side.neighbour >= 0:
            # The car parks in the neighbour lane (scenario-runner: one lane width to the side).
            lateral = side.neighbour_offset
            bxy = side.at(lateral)
            near = lanes.nearest_lanes(float(bxy[0]), float(bxy[1]), radius=3.0)
            s_lane = next((s for ln, _d, s, _y in near if ln == side.neighbour), None)
            if s_lane is None:
                raise self.fail("the lane beside the ego lane could not be located")
            self.ctx.backend.park_vehicle(self.parked_id, lanes.lane_ids[side.neighbour],
                                          s_lane + SUMO_CAR_HALF_LENGTH, kind=AgentKind.PARKED_VEHICLE,
                                          color=PARKED_COLOR)
            self.parked_sumo = True
            half_len = SUMO_CAR_HALF_LENGTH
        else:
            # No lane there: the car stands on the kerb just beyond the road edge.
            lateral = max(lane_w, side.edge + PARKED_CAR[2] + 0.1)
            bxy = side.at(lateral)
            self.actors.add(self.parked_id, AgentKind.PARKED_VEHICLE, bxy[0], bxy[1], side.yaw,
                            extent=PARKED_CAR[1:], color=PARKED_COLOR)
            self.parked_sumo = False
            half_len = PARKED_CAR[1]
        self.parked_xy = bxy
        along = half_len + 0.5
        self.collision_xy = side.at(0.0, along)
        self.collision_s = s_block + along
        sign = 1.0 if direction == "right" else -1.0
        heading = wrap(side.towards_road + sign * math.radians(angle))
        dist = self.across_distance(lateral, far.edge, math.radians(angle), self.WALK)
        self.walker_id = f"sc_walker_{self.name}"
        self.add_crosser(self.walker_id, AgentKind.PEDESTRIAN, side.at(lateral, along), heading, self.SPEED,
                         dist)
        self.side = side

    def on_trigger(self, scene: Scene) -> None:
        self.clear_route(self.ego_s(scene), self.collision_s + 15.0)

    @classmethod
    def candidate_triggers(cls, route: Route, lanes) -> np.ndarray:
        s = super().candidate_triggers(route, lanes)
        s = s[s + 60.0 < route.length]
        return s[urban(route, lanes, s, ahead=40.0)]

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        return {
            "distance": {"value": str(int(rng.integers(30, 51)))},
            "direction": {"value": "right" if rng.random() < 0.6 else "left"},
            "crossing_angle": {"value": str(int(rng.integers(0, 16)))},
        }


@register_scenario
class PedestrianCrossing(_CrossingScenario):
    """Three walkers cross the road from the right sidewalk just before the junction ahead."""

    type_name = "PedestrianCrossing"
    defaults: ClassVar[dict[str, str]] = {}
    differs_from_carla = ("walkers are scripted boxes walking straight at a fixed speed; they vanish once "
                          "past the far road edge")
    key_moment_s = 3.0
    reaction_time = 3.5
    min_trigger_dist = 12.0
    # (metres forward, metres outward from the sidewalk centre) of each walker (scenario-runner's layout).
    LAYOUT: ClassVar[tuple[tuple[float, float], ...]] = ((0.4, 1.5), (1.0, 2.5), (1.6, 0.5))

    def place(self) -> None:
        route, lanes = self.ctx.route, self.ctx.lanes
        jp = next((j for j in junction_passes(route, lanes) if j.entry_s > self.trigger_s + 1.0), None)
        if jp is None:
            raise self.fail("no junction on the route after the trigger point")
        self.junction = jp
        idx = int(np.clip(np.searchsorted(route.cum_length, jp.entry_s - 0.5), 0, len(route.points) - 1))
        while idx > 0 and (route.lane[idx] < 0 or lanes.is_internal[route.lane[idx]]):
            idx -= 1
        lane = int(route.lane[idx])
        if lane < 0 or lanes.is_internal[lane]:
            raise self.fail("no lane before the junction ahead")
        p, yaw = route.points[idx].astype(np.float64), float(route.yaw[idx])
        side = road_side(lanes, lane, p, yaw, "right")
        far = road_side(lanes, lane, p, yaw, "left")
        self.side = side
        self.collision_xy = p
        self.collision_s = float(route.cum_length[idx])
        rng = self.ctx.rng
        heading = side.towards_road
        for k, (fwd, outward) in enumerate(self.LAYOUT):
            lateral = side.sidewalk + outward
            xy = side.at(lateral, fwd)
            dist = 2.3 * float(np.hypot(*(xy - p)))
            dist = self.across_distance(lateral, far.edge, 0.0, dist)
            self.add_crosser(f"sc_walker_{self.name}_{k}", AgentKind.PEDESTRIAN, xy, heading,
                             float(rng.uniform(1.3, 2.0)), dist, idle_s=float(rng.uniform(0.0, 1.5)))

    def on_trigger(self, scene: Scene) -> None:
        # HandleJunctionScenario(clear_ego_entry=True): empty the ego's lane up to the junction.
        self.clear_route(self.ego_s(scene), self.collision_s + 1.0)

    @classmethod
    def candidate_triggers(cls, route: Route, lanes) -> np.ndarray:
        return junction_triggers(route, lanes)


def _exit_side(jp: JunctionPass) -> str:
    """The side a walker starts from for VehicleTurningRoutePedestrian: the right sidewalk on a left
    turn, the far (left) one otherwise (scenario-runner's entry x exit sign test)."""
    return "right" if jp.turn == "left" else "left"


class _TurningBase(_CrossingScenario):
    def junction_after_trigger(self) -> JunctionPass:
        jp = next((j for j in junction_passes(self.ctx.route, self.ctx.lanes)
                   if j.entry_s > self.trigger_s - 2.0), None)
        if jp is None:
            raise self.fail("no junction on the route after the trigger point")
        return jp

    @classmethod
    def candidate_triggers(cls, route: Route, lanes) -> np.ndarray:
        return junction_triggers(route, lanes, ok=lambda jp: jp.turn in ("left", "right"), after=40.0)


@register_scenario
class VehicleTurningRoute(_TurningBase):
    """After the junction where the route turns, a bicycle crosses the road the ego turns into."""

    type_name = "VehicleTurningRoute"
    defaults: ClassVar[dict[str, str]] = {}
    differs_from_carla = ("the bicycle is a scripted box at a constant 1.8 m/s; it rides on until past the "
                          "far road edge, then vanishes")
    key_moment_s = 5.0
    reaction_time = 1.8
    min_trigger_dist = 6.0
    SPEED = 1.8
    START_DISTANCE = 11.0  # m after the junction's exit
    SHIFT = 1.5  # m beyond the sidewalk centre

    def place(self) -> None:
        jp = self.junction_after_trigger()
        self.junction = jp
        side, far, self.collision_s, _ = self.sides_at(jp.exit_s + self.START_DISTANCE, "right",
                                                        "crossing point")
        self.side = side
        self.collision_xy = side.point
        lateral = side.sidewalk + self.SHIFT
        xy = side.at(lateral)
        dist = self.across_distance(lateral, far.edge, 0.0, 2.0 * lateral)
        self.cyclist_id = f"sc_bicycle_{self.name}"
        self.add_crosser(self.cyclist_id, AgentKind.BICYCLE, xy, side.towards_road, self.SPEED, dist,
                         color=BICYCLE_COLOR)


@register_scenario
class VehicleTurningRoutePedestrian(_TurningBase):
    """Right after the junction where the route turns, a walker crosses the road the ego turns into."""

    type_name = "VehicleTurningRoutePedestrian"
    defaults: ClassVar[dict[str, str]] = {}
    differs_from_carla = ("the walker is a scripted box at 1.8 m/s that vanishes past the far road edge; "
                          "from the far side it starts earlier by the time to cross the oncoming lanes")
    key_moment_s = 4.0
    reaction_time = 2.2
    min_trigger_dist = 6.0
    SPEED = 1.8
    SHIFT = 1.5

    def place(self) -> None:
        jp = self.junction_after_trigger()
        self.junction = jp
        lanes = self.ctx.lanes
        _, self.collision_s, lane, p, yaw = self.lane_point(jp.exit_s + 0.5, "crossing point")
        right = road_side(lanes, lane, p, yaw, "right")
        left = road_side(lanes, lane, p, yaw, "left")
        start_side = _exit_side(jp)
        side, other = (right, left) if start_side == "right" else (left, right)
        self.side = side
        self.collision_xy = p
        lateral = side.sidewalk + self.SHIFT
        dist = self.across_distance(lateral, other.edge, 0.0, right.sidewalk + left.sidewalk)
        self.walker_id = f"sc_walker_{self.name}"
        self.add_crosser(self.walker_id, AgentKind.PEDESTRIAN, side.at(lateral), side.towards_road,
                         self.SPEED, dist)


# ------------------------------------------------------------------------------ bicycle flow
def _flow_path(lanes, source: int, junction: str, end_xy: np.ndarray | None, beyond: float = 40.0
               ) -> tuple[list[str], int]:
    """Edges from the source lane through `junction` (straight on, or towards `end_xy`) and `beyond` m
    past it; also the lane the path leaves the junction on (-1 if it never crosses the junction)."""
    edges = [lanes.edge_of_lane[source]]
    lane, out_lane, covered = source, -1, 0.0
    for _ in range(12):
        succ = [(v, n) for v, n in normal_successors(lanes, lane)
                if not lanes.is_sidewalk[n] and not lanes.is_crossing[n]]
        if not succ:
            break
        yaw = _lane_yaw(lanes, lane, at_end=True)
        in_junction = [(v, n) for v, n in succ if v >= 0 and junction_of(lanes, v) == junction]
        if out_lane < 0 and in_junction:
            if end_xy is not None:
                _, n = min(in_junction, key=lambda vn: _dist_to_lane(lanes, vn[1], end_xy))
            else:
                straight = [vn for vn in in_junction
                            if turn_direction(yaw, _lane_yaw(lanes, vn[1], False)) == "straight"]
                if not straight:
                    break
                _, n = straight[0]
            out_lane = n
        else:
            _, n = min(succ, key=lambda vn: abs(wrap(_lane_yaw(lanes, vn[1], False) - yaw)))
        lane = n
        if lanes.edge_of_lane[lane] != edges[-1]:
            edges.append(lanes.edge_of_lane[lane])
        if out_lane >= 0:
            covered += float(lanes.length[lane])
            if covered >= beyond:
                break
    return edges, out_lane


def _insertable(lanes, lane: int, pos: float, speed: float) -> tuple[int, float]:
    """(lane, position) at or before (lane, pos) where SUMO accepts a vehicle at `speed`: far enough from the
    lane's end to stop before a red light there (SUMO refuses other insertions next to a held red)."""
    need = speed * speed / (2 * 4.5) + 5.0
    room = float(lanes.length[lane]) - need
    if pos <= room:
        return lane, pos
    if room >= 0.5:
        return lane, room
    return upstream(lanes, lane, float(lanes.length[lane]), need + 1.0)


def _lane_yaw(lanes, lane: int, at_end: bool) -> float:
    pl = lanes.polyline(lane)
    d = pl[-1] - pl[-2] if at_end else pl[1] - pl[0]
    return math.atan2(d[1], d[0])


def _dist_to_lane(lanes, lane: int, xy: np.ndarray) -> float:
    pl = lanes.polyline(lane)
    return float(np.min(np.hypot(pl[:, 0] - xy[0], pl[:, 1] - xy[1])))


@register_scenario
class CrossingBicycleFlow(Scenario):
    """A flow of bicycles crosses the junction ahead of the ego, ignoring lights and right of way."""

    type_name = "CrossingBicycleFlow"
    defaults: ClassVar[dict[str, str]] = {
        "start_actor_flow": "",  # CARLA location on the flow's lane; empty: a crossing approach is chosen
        "end_actor_flow": "",  # CARLA location where the flow leaves; empty: straight across
        "flow_speed": "10",
        "source_dist_interval": "20,50",
    }
    differs_from_carla = ("SUMO bicycles on the crossing road's lanes (no bike lanes unless the net has "
                          "them); without start_actor_flow the flow comes from a crossing approach")
    key_moment_s = 4.0
    PREFIX = "sc_bikeflow"
    actor_ids = ("PREFIX",)
    GREEN_DELAY = 5.0  # s of all-red before the ego's light turns green
    TIMEOUT = 240.0
    SOURCE_BACK = 40.0  # m before the junction where the flow starts when no start_actor_flow is given
    SPEED_MODE = 7  # safe speed and accel/decel limits, no right of way, no red lights

    def setup(self) -> None:
        route, lanes = self.ctx.route, self.ctx.lanes
        speed = self.float_param("flow_speed")
        if speed <= 0:
            raise ScenarioError(f"route {self.ctx.route_id}: scenario {self.name} flow_speed must be > 0")
        self.gap = self.interval_param("source_dist_interval")
        jp = next((j for j in junction_passes(route, lanes) if j.entry_s > self.trigger_s - 2.0), None)
        if jp is None:
            raise self.fail("no junction on the route after the trigger point")
        self.junction = jp
        end_xy = self.location_param("end_actor_flow") if self.param("end_actor_flow") else None
        if self.param("start_actor_flow"):
            src_xy = self.location_param("start_actor_flow")
            source, pos = -1, 0.0
            for ln, d, s, _y in lanes.nearest_lanes(float(src_xy[0]), float(src_xy[1]), radius=10.0,
                                                    drivable_only=False):
                special = lanes.is_internal[ln] or lanes.is_sidewalk[ln] or lanes.is_crossing[ln]
                if not special and d <= 10.0:
                    source, pos = int(ln), float(s)
                    break
            if source < 0:
                raise self.fail("no lane for bicycles within 10 m of start_actor_flow")
            source, pos = _insertable(lanes, source, pos, speed)
            edges, out_lane = _flow_path(lanes, source, jp.junction, end_xy)
        else:
            found = self.auto_source(lanes, jp, speed)
            if found is None:
                raise self.fail(f"junction {jp.junction} has no crossing approach a bicycle flow can come "
                                 "from")
            source, pos, edges, out_lane = found
        if out_lane < 0:
            raise self.fail(f"the bicycle flow from lane {lanes.lane_ids[source]} does not cross junction "
                             f"{jp.junction}")
        self.source, self.source_pos, self.edges = source, pos, edges
        self.flow = ActorFlow(self.ctx.backend, self.PREFIX, edges, int(lanes.lane_index[source]), pos, speed,
                              self.gap, self.ctx.rng, vclass="bicycle", kind=AgentKind.BICYCLE)
        self.speed = speed
        self._configured: set[str] = set()
        self._tls_program: dict[str, str] = {}
        self._lights_phase = "none"
        self._done = False

    @classmethod
    def auto_source(cls, lanes, jp: JunctionPass, speed: float) -> tuple[int, float, list[str], int] | None:
        """(source lane, position, edges, exit lane) of a flow crossing `jp` straight from the ego's left
        (or right, unless the ego turns right), starting about 40 m before the junction; None if none."""
        approaches = junction_approaches(lanes, jp)
        order = {"from_left": 0, "from_right": 1}
        if jp.turn == "right":
            order = {"from_left": 0}  # a right turn only crosses the near (from-left) flow
        cands = sorted((a for a in approaches
                        if a.relation in order and any(t == "straight" for _, _, t in a.exits)),
                       key=lambda a: (order[a.relation], -int(lanes.lane_index[a.lane])))
        for a in cands:
            lane, pos = upstream(lanes, a.lane, float(lanes.length[a.lane]), cls.SOURCE_BACK)
            lane, pos = _insertable(lanes, lane, pos, speed)
            edges, out_lane = _flow_path(lanes, lane, jp.junction, None)
            if out_lane >= 0:
                return lane, pos, edges, out_lane
        return None

    @classmethod
    def _crossable(cls, lanes, jp: JunctionPass) -> bool:
        return cls.auto_source(lanes, jp, 12.0) is not None

    @classmethod
    def candidate_triggers(cls, route: Route, lanes) -> np.ndarray:
        return junction_triggers(route, lanes, ok=lambda jp: cls._crossable(lanes, jp))

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        lo = int(rng.integers(5, 16))
        hi = int(rng.integers(lo + 10, 36))
        return {"flow_speed": {"value": str(int(rng.integers(5, 13)))},
                "source_dist_interval": {"from": str(lo), "to": str(hi)}}

    # ---------------------------------------------------------------------------------- running
    def on_trigger(self, scene: Scene) -> None:
        backend, lanes, route = self.ctx.backend, self.ctx.lanes, self.ctx.route
        jp = self.junction
        # HandleJunctionScenario(clear_junction, clear_ego_entry): no background traffic in the way.
        k0, k1 = np.searchsorted(route.cum_length, [self.ego_s(scene), jp.exit_s])
        pts = route.points[k0: max(k1, k0 + 1): 10]
        poly = lanes.junction_polygons[lanes.junction_ids.index(jp.junction)] \
            if jp.junction in lanes.junction_ids else np.zeros((0, 2))
        backend.remove_vehicles_near(np.vstack([pts, poly]) if len(poly) else pts, 3.0)
        self._populate()
        self.flow.start()
        self._freeze_lights()
        self.status.notes.append(f"bicycle flow starts on {self.edges[0]} across junction {jp.junction}")

    def _populate(self) -> None:
        """BicycleFlow(initial_actors=True): bicycles along the source lane up to the junction."""
        lanes = self.ctx.lanes
        # Not within braking distance of the lane's end: SUMO refuses to insert a vehicle that could not
        # stop at a red light there (the flow's speed mode, which ignores lights, applies once inserted).
        last = float(lanes.length[self.source]) - self.speed ** 2 / (2 * 4.5) - 3.0
        pos = self.source_pos + float(self.ctx.rng.uniform(*self.gap))
        k = 0
        while pos < last:
            vid = f"{self.PREFIX}_init{k}"
            self.ctx.backend.add_vehicle(vid, self.edges, int(lanes.lane_index[self.source]), pos, self.speed,
                                         vclass="bicycle", kind=AgentKind.BICYCLE, max_speed=self.speed)
            self.flow.spawned.insert(0, vid)
            k += 1
            pos += float(self.ctx.rng.uniform(*self.gap))

    def _links(self) -> dict[str, list[tuple[int, bool]]]:
        """Per traffic light of the junction: (link index, from the ego's approach edge)."""
        lanes, jp = self.ctx.lanes, self.junction
        ego_edge = lanes.edge_of_lane[jp.in_lane]
        out: dict[str, list[tuple[int, bool]]] = {}
        rows = zip(lanes.tl_ids, lanes.tl_link_index, lanes.tl_from_lane, lanes.tl_via_lane, strict=False)
        for tls, link, frm, via in rows:
            if junction_of(lanes, int(via)) == jp.junction:
                out.setdefault(tls, []).append((int(link), lanes.edge_of_lane[int(frm)] == ego_edge))
        return out

    def _set_lights(self, ego_green: bool) -> None:
        ls = self.ctx.backend.ls
        for tls, links in self._links().items():
            state = list(ls.trafficlight.getRedYellowGreenState(tls))
            for link, ego in links:
                if link < len(state):
                    state[link] = "G" if (ego and ego_green) else "r"
            ls.trafficlight.setRedYellowGreenState(tls, "".join(state))

    def _freeze_lights(self) -> None:
        links = self._links()
        if not links:
            return
        ls = self.ctx.backend.ls
        self._tls_program = {tls: ls.trafficlight.getProgram(tls) for tls in links}
        self._set_lights(ego_green=False)
        self._lights_phase = "red"

    def _release_lights(self) -> None:
        ls = self.ctx.backend.ls
        for tls, prog in self._tls_program.items():
            ls.trafficlight.setProgram(tls, prog)
        self._lights_phase = "released"

    def tick(self, scene: Scene) -> None:
        if not self.status.triggered or not hasattr(self, "flow"):
            return
        ls = self.ctx.backend.ls
        for vid in self.flow.alive():
            if vid not in self._configured:
                ls.vehicle.setSpeedMode(vid, self.SPEED_MODE)
                self._configured.add(vid)
        if self.flow.active and len(self.flow.spawned) - len(self._configured) > 20:
            # SUMO keeps refusing the source (e.g. a vehicle standing on it): give up on the flow.
            self.flow.stop()
            self.status.notes.append("bicycle flow stopped: SUMO refused its insertions")
        passed = self.ego_s(scene) > self.junction.exit_s
        if passed and not self._done:
            # WaitEndIntersection: the scenario ends when the ego leaves the junction.
            self._done = True
            self.flow.stop()
        if self._lights_phase == "red":
            if self._done:
                self._release_lights()
            else:
                self._set_lights(ego_green=self.seconds_since_trigger(scene) >= self.GREEN_DELAY)
        self.flow.tick()
        self.check_timeout(scene, passed, self.TIMEOUT, "cross the bicycle flow")


# ------------------------------------------------------------------------------- control loss
@register_scenario
class ControlLoss(Scenario):
    """The ego loses control over three debris spots 14, 48 and 74 m after the trigger: noise on its
    steering and throttle while it is within 2 m of each."""

    type_name = "ControlLoss"
    defaults: ClassVar[dict[str, str]] = {}
    ignored = ("distance", "direction", "speed")  # in some Bench2Drive training routes; unused there too
    differs_from_carla = ("the debris are not Scene agents (flat props the ego drives over); only the "
                          "control noise is applied")
    key_moment_s = 2.0
    DISTANCES: ClassVar[tuple[float, ...]] = (14.0, 48.0, 74.0)
    TRIGGER_DIST = 2.0
    THROTTLE = (0.03, 0.01)  # mean magnitude, std
    STEER = (0.055, 0.015)

    def setup(self) -> None:
        route = self.ctx.route
        rng = self.ctx.rng
        self.debris: list[np.ndarray] = []
        self.noise: list[tuple[float, float]] = []
        for d in self.DISTANCES:
            s = self.trigger_s + d
            if s > route.length:
                break
            _, p, _ = self.route_point(s)
            self.debris.append(np.asarray(p, np.float64))
            self.noise.append((float(rng.choice([self.THROTTLE[0], -self.THROTTLE[0]])),
                               float(rng.choice([self.STEER[0], -self.STEER[0]]))))
        if not self.debris:
            raise self.fail(f"the first debris ({self.DISTANCES[0]:.0f} m after the trigger) lies beyond "
                            f"the route's end")
        self.current = 0  # debris whose noise window comes next
        self.inside = False
        self.perturbed_ticks = 0

    def perturb_control(self, action: np.ndarray, scene: Scene) -> np.ndarray:
        if not self.status.triggered or self.current >= len(self.debris):
            return action
        p = self.debris[self.current]
        d = math.hypot(scene.ego.x - p[0], scene.ego.y - p[1])
        if d < self.TRIGGER_DIST:
            self.inside = True
        elif self.inside:
            self.inside = False
            self.current += 1
            return action
        if not self.inside:
            return action
        rng = self.ctx.rng
        t_mean, s_mean = self.noise[self.current]
        out = np.array(action, dtype=np.float64, copy=True)
        out[0] = min(max(out[0] + rng.normal(t_mean, self.THROTTLE[1]), 0.0), 1.0)
        out[2] = min(max(out[2] + rng.normal(s_mean, self.STEER[1]), -1.0), 1.0)
        self.perturbed_ticks += 1
        return out

    @classmethod
    def candidate_triggers(cls, route: Route, lanes) -> np.ndarray:
        s = super().candidate_triggers(route, lanes)
        return s[s + cls.DISTANCES[-1] + 10.0 < route.length]
