"""Junction scenarios about right of way: lights, stop signs, vehicles running red or taking priority.

Bench2Drive's Traffic-Signs types (T_Junction, Vanilla*) put no actors on the road; they hold the ego to
a criterion (T_Junction: drive 200 m within 240 s) and, for the signalised variants, freeze the junction's
lights for a while (scenario-runner's TrafficLightFreezer). Here a "traffic light" is the group of SUMO
signal links entering the junction from one road (CARLA has one light head per approach road), so the
ego's light is every link from the ego's incoming edge into the junction.

OppositeVehicleRunningRedLight / OppositeVehicleTakingPriority: an emergency vehicle waits 30 m before the
junction on the crossing road (`direction`: the side it comes from, seen by the ego) and, once the ego is
2.2 s (or 12 m) from the point where their paths meet, drives straight across at 60 km/h ignoring lights,
priority and other vehicles; it disappears 10 m after the junction. The signalised version holds the
ego's light green and every other light of the junction red meanwhile.

BlockedIntersection: a car stands 5 m after the route's exit from the junction, blocking it; it leaves 10 s
after the ego came within 13 m. If that has not happened within 240 s, a scenario timeout is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from envs.scenarios.base import Scenario, ScenarioError, register_scenario
from envs.scenarios.placement import (
    JunctionPass,
    junction_approaches,
    junction_of,
    junction_passes,
    lane_heading,
    wrap,
)
from envs.scene import AgentKind, Route, Scene

# Sampler: where a junction scenario's trigger may lie, metres before the junction's entry.
TRIGGER_BEFORE = (10.0, 40.0)
TRIGGER_STEP = 5.0
# The junction a scenario plays at must begin within this distance after its trigger point.
JUNCTION_SEARCH = 100.0
# Minimum route after the junction's exit the sampler asks for.
ROUTE_AFTER_JUNCTION = 20.0
EMERGENCY_LENGTH = 6.5  # m, the backend's emergency vehicle type


# ------------------------------------------------------------------------------------ topology
def junction_ahead(route: Route, lanes, s: float, max_ahead: float = JUNCTION_SEARCH) -> JunctionPass | None:
    """The first real intersection the route passes after route distance `s` (one the ego is inside of
    counts), if it begins within `max_ahead` metres."""
    for jp in junction_passes(route, lanes):
        if jp.exit_s <= s + 0.5 or not is_intersection(lanes, jp):
            continue
        return jp if jp.entry_s - s <= max_ahead else None
    return None


def is_intersection(lanes, jp: JunctionPass) -> bool:
    """A junction with a crossing road or a choice of ways for the ego (not a mere join of two roads)."""
    approaches = junction_approaches(lanes, jp)
    if any(a.relation in ("from_left", "from_right") for a in approaches):
        return True
    in_edge = lanes.edge_of_lane[jp.in_lane]
    outs = {lanes.edge_of_lane[n] for a in approaches if lanes.edge_of_lane[a.lane] == in_edge
            for _, n, _ in a.exits}
    return len(outs) >= 2


def road_count(lanes, jp: JunctionPass) -> int:
    """Number of roads (incoming edges) entering the junction: 3 at a T junction."""
    return len({lanes.edge_of_lane[a.lane] for a in junction_approaches(lanes, jp)})


def signal_rows(lanes, jp: JunctionPass) -> np.ndarray:
    """Rows of the LaneGraph's signal table (tl_*) whose link enters the junction of `jp`."""
    via = np.asarray(lanes.tl_via_lane)
    rows = [k for k in range(len(via)) if junction_of(lanes, int(via[k])) == jp.junction]
    return np.asarray(rows, np.int64)


def ego_signal_rows(lanes, jp: JunctionPass) -> np.ndarray:
    """Signal rows of the ego's light: every link from the ego's incoming road into the junction."""
    rows = signal_rows(lanes, jp)
    in_edge = lanes.edge_of_lane[jp.in_lane]
    mine = [k for k in rows if lanes.edge_of_lane[int(lanes.tl_from_lane[k])] == in_edge]
    return np.asarray(mine, np.int64)


def is_signalised(lanes, jp: JunctionPass) -> bool:
    return bool(np.isin(jp.in_lane, np.asarray(lanes.tl_from_lane)[signal_rows(lanes, jp)]))


def is_stop_controlled(lanes, jp: JunctionPass) -> bool:
    return bool(np.isin(jp.in_lane, np.asarray(lanes.stop_lanes)))


def internal_path(lanes, via: int) -> np.ndarray:
    """Polyline of an internal via lane and the internal lanes chained after it (split junction lanes)."""
    parts = [lanes.polyline(via)]
    lane, seen = via, {via}
    while True:
        nxt = [int(n) for n in lanes.successors(lane) if lanes.is_internal[int(n)] and int(n) not in seen]
        if not nxt:
            break
        lane = nxt[0]
        seen.add(lane)
        parts.append(lanes.polyline(lane))
    return np.concatenate(parts)


def _densify(pl: np.ndarray, step: float = 0.25) -> np.ndarray:
    seg = np.linalg.norm(np.diff(pl, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if cum[-1] <= 0.0:
        return pl[:1]
    s = np.arange(0.0, cum[-1] + 1e-9, step)
    return np.column_stack([np.interp(s, cum, pl[:, 0]), np.interp(s, cum, pl[:, 1])])


def _line_intersection(p: np.ndarray, yaw_p: float, q: np.ndarray, yaw_q: float) -> np.ndarray | None:
    """Where the line through p along yaw_p meets the line through q along yaw_q (None if parallel)."""
    d1 = np.array([math.cos(yaw_p), math.sin(yaw_p)])
    d2 = np.array([math.cos(yaw_q), math.sin(yaw_q)])
    den = d1[0] * d2[1] - d1[1] * d2[0]
    if abs(den) < 1e-6:
        return None
    w = q - p
    t = (w[0] * d2[1] - w[1] * d2[0]) / den
    return p + t * d1


@dataclass
class AdversaryPlan:
    """Where the crossing vehicle of OppositeVehicle* comes from and where it meets the route."""

    approach: int  # its normal lane entering the junction
    via: int  # its internal lane through the junction
    out_lane: int  # its normal lane after the junction
    conflict: np.ndarray  # (x, y) where its path meets the route
    conflict_s: float  # route distance of that point
    crosses: bool  # False: the paths do not touch; conflict is scenario-runner's line intersection


CROSS_DISTANCE = 1.5  # metres: paths whose centre lines come this close meet


def adversary_plan(route: Route, lanes, jp: JunctionPass, direction: str) -> AdversaryPlan | None:
    """The straightest way across the junction from the approach on the ego's `direction` side ('left' /
    'right'), preferring approach lanes whose path meets the route's way through the junction."""
    rel = "from_left" if direction == "left" else "from_right"
    lo = max(jp.entry_index - 5 * Route.POINTS_PER_METER, 0)
    hi = min(jp.exit_index + 5 * Route.POINTS_PER_METER, len(route.points) - 1)
    ego_path = route.points[lo : hi + 1]
    best: tuple[tuple[int, float, float], AdversaryPlan] | None = None
    for a in junction_approaches(lanes, jp):
        if a.relation != rel or not a.exits:
            continue
        yaw_in = lane_heading(lanes, a.lane, at_end=True)
        via, out, _ = min(a.exits, key=lambda e: abs(wrap(lane_heading(lanes, e[1], at_end=False) - yaw_in)))
        path = _densify(internal_path(lanes, via))
        d = np.hypot(ego_path[:, None, 0] - path[None, :, 0], ego_path[:, None, 1] - path[None, :, 1])
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        crosses = bool(d[i, j] <= CROSS_DISTANCE)
        if crosses:
            conflict = ego_path[i]
            k = lo + int(i)
        else:
            p = route.points[jp.entry_index]
            q = lanes.polyline(a.lane)[-1]
            conflict = _line_intersection(p, float(route.yaw[jp.entry_index]), q, yaw_in)
            if conflict is None:
                continue
            k = int(np.argmin(np.hypot(*(route.points - conflict).T)))
        plan = AdversaryPlan(int(a.lane), int(via), int(out), np.asarray(conflict, np.float64),
                             float(route.cum_length[k]), crosses)
        key = (0 if crosses else 1, float(route.cum_length[k]), float(lanes.lane_index[a.lane]))
        if best is None or key < best[0]:
            best = (key, plan)
    return None if best is None else best[1]


# ---------------------------------------------------------------------------------- lights
class LightFreezer:
    """scenario-runner's TrafficLightFreezer on SUMO: holds the junction's signal links in a chosen state
    (the ego's road green or red, every other link red) and gives the lights back to their program
    (at the phase they had) on release."""

    def __init__(self, scenario: Scenario, jp: JunctionPass):
        lanes = scenario.ctx.lanes
        self.backend = scenario.ctx.backend
        rows = signal_rows(lanes, jp)
        self.ego_rows = ego_signal_rows(lanes, jp)
        self.tls = sorted({lanes.tl_ids[int(k)] for k in rows})
        self.links = [(lanes.tl_ids[int(k)], int(lanes.tl_link_index[k])) for k in self.ego_rows]
        self._saved: dict[str, tuple[str, int]] | None = None
        self.state: str = "free"

    def __bool__(self) -> bool:
        return bool(self.tls)

    def hold(self, ego_green: bool) -> None:
        """Ego's links green ('G') or red, all other links of the junction's lights red."""
        ls = self.backend.ls
        if self._saved is None:
            self._saved = {t: (ls.trafficlight.getProgram(t), ls.trafficlight.getPhase(t)) for t in self.tls}
        for t in self.tls:
            state = ["r"] * len(ls.trafficlight.getRedYellowGreenState(t))
            if ego_green:
                for tl, link in self.links:
                    if tl == t and link < len(state):
                        state[link] = "G"
            ls.trafficlight.setRedYellowGreenState(t, "".join(state))
        self.state = "ego_green" if ego_green else "all_red"

    def release(self) -> None:
        if self._saved is None:
            return
        ls = self.backend.ls
        for t, (program, phase) in self._saved.items():
            try:
                ls.trafficlight.setProgram(t, program)
                ls.trafficlight.setPhase(t, phase)
            except ls.TraCIException:  # program was "online" already (another freezer): leave as is
                pass
        self._saved = None
        self.state = "free"


# ------------------------------------------------------------------------------- base class
class _JunctionScenario(Scenario):
    """Shared: the junction after the trigger and the sampler's trigger windows."""

    def find_junction(self) -> JunctionPass:
        jp = junction_ahead(self.ctx.route, self.ctx.lanes, self.trigger_s)
        if jp is None:
            raise ScenarioError(
                f"route {self.ctx.route_id}: scenario {self.name} ({self.type_name}) needs a junction "
                f"within {JUNCTION_SEARCH:.0f} m after its trigger point (route s={self.trigger_s:.0f} m); "
                "there is none"
            )
        return jp

    @classmethod
    def junction_fits(cls, route: Route, lanes, jp: JunctionPass) -> bool:
        return True

    @classmethod
    def candidate_triggers(cls, route: Route, lanes: object) -> np.ndarray:
        """Every TRIGGER_STEP m from 40 to 10 m before each junction the type fits, past the previous
        junction (so that this one is the first ahead), with ROUTE_AFTER_JUNCTION m of route after it."""
        out: list[np.ndarray] = []
        prev_exit = 0.0
        for jp in junction_passes(route, lanes):
            real = is_intersection(lanes, jp)
            room = jp.exit_s + ROUTE_AFTER_JUNCTION <= route.length
            if real and room and cls.junction_fits(route, lanes, jp):
                lo, hi = jp.entry_s - TRIGGER_BEFORE[1], jp.entry_s - TRIGGER_BEFORE[0]
                s = np.arange(lo, hi + 1e-6, TRIGGER_STEP)
                out.append(s[(s >= max(prev_exit + 1.0, 5.0))])
            if real:
                prev_exit = jp.exit_s
        return np.concatenate(out) if out else np.zeros(0)

    def passed_junction(self, scene: Scene, jp: JunctionPass, beyond: float) -> bool:
        return self.ego_s(scene) >= min(jp.exit_s + beyond, 0.98 * self.ctx.route.length)


# ---------------------------------------------------------------------------- Traffic signs
@register_scenario
class T_Junction(_JunctionScenario):
    """Cross a T junction obeying its light or stop sign. No actors; the ego must drive 200 m after the
    trigger (or to the route's end) within the scenario timeout (240 s)."""

    type_name = "T_Junction"
    defaults: ClassVar[dict[str, str]] = {"timeout": "240"}
    differs_from_carla = ("No actors, as in CARLA; the 200 m DriveDistance ends at the route's end when the "
                          "route is shorter; `timeout` (240 s) is an extra parameter")
    key_moment_s = 3.0
    DRIVE_DISTANCE = 200.0

    def setup(self) -> None:
        self.timeout_s = self.float_param("timeout")
        # a shorter route ends first (the episode completes at 99 %): then the route's end counts
        self.goal_s = min(self.trigger_s + self.DRIVE_DISTANCE, 0.98 * self.ctx.route.length)

    def tick(self, scene: Scene) -> None:
        self.check_timeout(scene, self.ego_s(scene) >= self.goal_s, self.timeout_s,
                           f"drive {self.DRIVE_DISTANCE:.0f} m through the T junction")

    @classmethod
    def junction_fits(cls, route: Route, lanes, jp: JunctionPass) -> bool:
        return road_count(lanes, jp) == 3


class _VanillaTurn(_JunctionScenario):
    """Vanilla junction turn: no actors; ends when the ego is 10 m past the junction."""

    defaults: ClassVar[dict[str, str]] = {}
    END_DISTANCE = 10.0
    key_moment_s = 3.0

    def setup(self) -> None:
        self.jp = self.find_junction()
        self.done = False

    def tick(self, scene: Scene) -> None:
        if not self.status.triggered or self.done:
            return
        if self.passed_junction(scene, self.jp, self.END_DISTANCE):
            self.done = True
            self.finish(scene)
            self.status.notes.append(f"ego passed junction {self.jp.junction}")

    def finish(self, scene: Scene) -> None:
        """Called once when the ego is END_DISTANCE past the junction."""

    @classmethod
    def junction_fits(cls, route: Route, lanes, jp: JunctionPass) -> bool:
        return jp.turn != "straight"


@register_scenario
class VanillaNonSignalizedTurn(_VanillaTurn):
    type_name = "VanillaNonSignalizedTurn"
    differs_from_carla = "No actors, as in CARLA; who yields comes from SUMO's junction priorities"

    @classmethod
    def junction_fits(cls, route: Route, lanes, jp: JunctionPass) -> bool:
        return (super().junction_fits(route, lanes, jp) and not is_signalised(lanes, jp)
                and not is_stop_controlled(lanes, jp))


@register_scenario
class VanillaNonSignalizedTurnEncounterStopsign(_VanillaTurn):
    type_name = "VanillaNonSignalizedTurnEncounterStopsign"
    differs_from_carla = "No actors, as in CARLA; the stop signs are SUMO's stop / all-way-stop links"

    @classmethod
    def junction_fits(cls, route: Route, lanes, jp: JunctionPass) -> bool:
        return super().junction_fits(route, lanes, jp) and is_stop_controlled(lanes, jp)


class _SignalizedTurn(_VanillaTurn):
    """Freezes the junction's lights in two stages of GREEN_DELAY s from the trigger, as the definition."""

    GREEN_DELAY = 5.0
    STAGES: ClassVar[tuple[str, str]] = ("ego_green", "all_red")  # then the lights' own program
    HOLD_SECOND: ClassVar[bool] = False  # True: the second stage lasts until the ego passed

    def setup(self) -> None:
        super().setup()
        self.lights = LightFreezer(self, self.jp)
        if not self.lights or not len(self.lights.ego_rows):
            raise ScenarioError(
                f"route {self.ctx.route_id}: scenario {self.name} ({self.type_name}) needs a traffic light "
                f"on the route's way into junction {self.jp.junction}; it has none (use the non-signalised "
                "type)"
            )
        self.stage = -1

    def on_trigger(self, scene: Scene) -> None:
        self._set_stage(0)

    def _set_stage(self, k: int) -> None:
        self.stage = k
        if k < len(self.STAGES):
            self.lights.hold(self.STAGES[k] == "ego_green")
            self.status.notes.append(f"lights of junction {self.jp.junction}: {self.STAGES[k]}")
        else:
            self.lights.release()

    def tick(self, scene: Scene) -> None:
        super().tick(scene)
        if not self.status.triggered or self.done:
            return
        t = self.seconds_since_trigger(scene)
        if self.stage == 0 and t >= self.GREEN_DELAY:
            self._set_stage(1)
        elif self.stage == 1 and not self.HOLD_SECOND and t >= 2 * self.GREEN_DELAY:
            self._set_stage(2)

    def finish(self, scene: Scene) -> None:
        self.lights.release()

    @classmethod
    def junction_fits(cls, route: Route, lanes, jp: JunctionPass) -> bool:
        return super().junction_fits(route, lanes, jp) and is_signalised(lanes, jp)


@register_scenario
class VanillaSignalizedTurnEncounterGreenLight(_SignalizedTurn):
    type_name = "VanillaSignalizedTurnEncounterGreenLight"
    differs_from_carla = ("Freezes SUMO signal links: the ego's incoming road green, the rest red, for 5 s, "
                          "then all red 5 s, then the program resumes (crossing lights included)")
    STAGES = ("ego_green", "all_red")


@register_scenario
class VanillaSignalizedTurnEncounterRedLight(_SignalizedTurn):
    type_name = "VanillaSignalizedTurnEncounterRedLight"
    differs_from_carla = ("Freezes SUMO signal links: all red for 5 s, then the ego's incoming road green "
                          "until it is 10 m past the junction, then the program resumes")
    STAGES = ("all_red", "ego_green")
    HOLD_SECOND = True


# --------------------------------------------------------------------------- emergency brake
class _OppositeVehicle(_JunctionScenario):
    """A vehicle from the crossing road drives across the junction as the ego arrives."""

    defaults: ClassVar[dict[str, str]] = {"direction": "right"}
    ADVERSARY = "sc_opposite_vehicle"
    actor_ids = ("ADVERSARY",)
    SOURCE_DISTANCE = 30.0  # m before the junction (its centre)
    SINK_DISTANCE = 10.0  # m after the junction
    SPEED = 60.0 / 3.6
    SYNC_TIME = 2.2  # s: the ego's time to the conflict point that starts the adversary
    MIN_TRIGGER_DISTANCE = 12.0  # m: or the ego's distance to it
    CLEAR_RADIUS = 25.0
    key_moment_s = 3.5
    signalised: ClassVar[bool] = False

    def setup(self) -> None:
        direction = self.param("direction")
        if direction not in ("left", "right"):
            raise ScenarioError(
                f"route {self.ctx.route_id}: scenario {self.name} ({self.type_name}) direction must be "
                f"'left' or 'right', got {direction!r}"
            )
        lanes = self.ctx.lanes
        self.jp = self.find_junction()
        plan = adversary_plan(self.ctx.route, lanes, self.jp, direction)
        if plan is None:
            raise ScenarioError(
                f"route {self.ctx.route_id}: scenario {self.name} ({self.type_name}) finds no road entering "
                f"junction {self.jp.junction} from the ego's {direction}"
            )
        self.plan = plan
        if not plan.crosses:
            self.status.notes.append("the adversary's path does not touch the route; it passes close by")
        self.lights = LightFreezer(self, self.jp) if self.signalised else None
        if self.signalised and not (self.lights and len(self.lights.ego_rows)):
            self.lights = None
            self.status.notes.append(f"junction {self.jp.junction} has no traffic light here: none frozen")
        self._plan_source()
        self.phase = "idle"  # -> waiting -> crossing -> gone
        self._start_tick = 0

    def _plan_source(self) -> None:
        lanes = self.ctx.lanes
        plan = self.plan
        half = 0.5 * EMERGENCY_LENGTH
        length = float(lanes.length[plan.approach])
        front = self.SOURCE_DISTANCE - half  # front bumper this far before the junction
        # scenario-runner walks back at most to the previous junction: stay on the approach lane
        self.source_pos = max(length - front, min(2.0 * half, length))
        edges = [lanes.edge_of_lane[plan.approach], lanes.edge_of_lane[plan.out_lane]]
        self.edges = edges
        self.lane_index = int(lanes.lane_index[plan.approach])
        # where it disappears: SINK_DISTANCE m after the junction (straight-line time, as the definition)
        out_pts = _densify(lanes.polyline(plan.out_lane), 0.5)
        sink = out_pts[min(int(self.SINK_DISTANCE / 0.5), len(out_pts) - 1)]
        source_xy = np.asarray(lanes.position_on_lane(plan.approach, self.source_pos - half)[:2])
        self.sink_xy = sink
        self.crossing_time = float(np.hypot(*(sink - source_xy))) / self.SPEED

    def on_trigger(self, scene: Scene) -> None:
        backend = self.ctx.backend
        lanes = self.ctx.lanes
        centre = np.asarray(lanes.polyline(self.plan.via)).mean(axis=0)
        src = np.asarray(lanes.position_on_lane(self.plan.approach, self.source_pos)[:2])
        backend.remove_vehicles_near(np.stack([centre, src, self.sink_xy]), self.CLEAR_RADIUS)
        backend.add_vehicle(self.ADVERSARY, self.edges, self.lane_index, self.source_pos, 0.0,
                            vclass="emergency", kind=AgentKind.EMERGENCY)
        ls = backend.ls
        ls.vehicle.setSpeed(self.ADVERSARY, 0.0)
        ls.vehicle.setLaneChangeMode(self.ADVERSARY, 0)
        if self.lights is not None:
            self.lights.hold(ego_green=True)
        self.phase = "waiting"
        self.status.notes.append(f"adversary waits on {lanes.lane_ids[self.plan.approach]}")

    def tick(self, scene: Scene) -> None:
        if not self.status.triggered:
            return
        backend = self.ctx.backend
        ls = backend.ls
        present = self.ADVERSARY in backend.vehicle_ids()
        if self.phase == "waiting" and present:
            ego = np.array([scene.ego.x, scene.ego.y])
            dist = float(np.hypot(*(self.plan.conflict - ego)))
            ahead = self.plan.conflict_s - self.ego_s(scene)
            tta = ahead / scene.ego.speed if scene.ego.speed > 0.1 else math.inf
            if ahead > -2.0 and (tta <= self.SYNC_TIME or dist <= self.MIN_TRIGGER_DISTANCE):
                ls.vehicle.setSpeedMode(self.ADVERSARY, 0)  # ignore lights, priority, vehicles
                ls.vehicle.setSpeed(self.ADVERSARY, self.SPEED)
                self.phase = "crossing"
                self._start_tick = scene.tick
                self.status.notes.append("adversary crosses the junction")
        elif self.phase == "crossing" and (
            not present or (scene.tick - self._start_tick) * scene.dt >= self.crossing_time
        ):
            if present:
                ls.vehicle.remove(self.ADVERSARY)
            self.phase = "gone"
        if self.lights is not None and self.phase == "gone" and self.passed_junction(scene, self.jp, 0.0):
            self.lights.release()
            self.lights = None

    @classmethod
    def junction_fits(cls, route: Route, lanes, jp: JunctionPass) -> bool:
        if is_signalised(lanes, jp) != cls.signalised:
            return False
        for direction in ("left", "right"):
            plan = adversary_plan(route, lanes, jp, direction)
            if plan is None or not plan.crosses:
                return False
        return True

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        return {"direction": {"value": str(rng.choice(["left", "right"]))}}


@register_scenario
class OppositeVehicleRunningRedLight(_OppositeVehicle):
    type_name = "OppositeVehicleRunningRedLight"
    differs_from_carla = ("Emergency-class SUMO vehicle with all speed checks off (speedMode 0); the lights "
                          "are SUMO signal links; a junction without SUMO lights runs with no light frozen")
    signalised = True


@register_scenario
class OppositeVehicleTakingPriority(_OppositeVehicle):
    type_name = "OppositeVehicleTakingPriority"
    differs_from_carla = ("Emergency-class SUMO vehicle with all speed checks off (speedMode 0); other "
                          "entries are cleared of background traffic rather than stopped")
    signalised = False


@register_scenario
class BlockedIntersection(_JunctionScenario):
    """A car stands just after the route's exit from the junction; it leaves 10 s after the ego got close."""

    type_name = "BlockedIntersection"
    defaults: ClassVar[dict[str, str]] = {"timeout": "240"}
    differs_from_carla = ("Blocker is a stopped SUMO car; the junction's other entries are cleared of "
                          "background traffic rather than stopped; `timeout` (240 s) is an extra parameter")
    key_moment_s = 4.0
    BLOCKER = "sc_blocker"
    actor_ids = ("BLOCKER",)
    BLOCKER_DISTANCE = 5.0  # m after the junction's exit (its centre)
    TRIGGER_DISTANCE = 13.0  # m between the ego and the blocker that starts the wait
    STOP_TIME = 10.0
    HALF_LENGTH = 2.5  # SUMO's default car is 5 m long

    def setup(self) -> None:
        self.timeout_s = self.float_param("timeout")
        self.jp = self.find_junction()
        self.blocker_s = self.jp.exit_s + self.BLOCKER_DISTANCE
        if self.blocker_s + self.HALF_LENGTH > self.ctx.route.length:
            raise ScenarioError(
                f"route {self.ctx.route_id}: scenario {self.name} ({self.type_name}) needs "
                f"{self.BLOCKER_DISTANCE + 2 * self.HALF_LENGTH:.0f} m of route after junction "
                f"{self.jp.junction}; the route ends first"
            )
        self.edges, self.lane_index, self.front_pos, _ = self.lane_position(self.blocker_s + self.HALF_LENGTH)
        _, self.blocker_xy, _ = self.route_point(self.blocker_s)
        self.phase = "idle"  # -> standing -> waiting -> gone
        self._wait_tick = 0

    def on_trigger(self, scene: Scene) -> None:
        backend = self.ctx.backend
        lanes = self.ctx.lanes
        route = self.ctx.route
        lo = self.trigger_index
        hi = min(int(np.searchsorted(route.cum_length, self.blocker_s + 15.0)), len(route.points) - 1)
        centre = np.asarray(lanes.polyline(int(route.lane[self.jp.entry_index]))).mean(axis=0)
        pts = np.vstack([route.points[lo : hi + 1 : 20], centre[None]])
        backend.remove_vehicles_near(pts, 8.0)
        backend.remove_vehicles_near(centre[None], 20.0)
        backend.park_vehicle(self.BLOCKER, f"{self.edges[0]}_{self.lane_index}", self.front_pos,
                             kind=AgentKind.VEHICLE, color=(90, 90, 200))
        self.phase = "standing"
        self.status.notes.append(f"blocker stands after junction {self.jp.junction}")

    def tick(self, scene: Scene) -> None:
        if not self.status.triggered:
            return
        backend = self.ctx.backend
        if self.phase == "standing":
            d = math.hypot(scene.ego.x - self.blocker_xy[0], scene.ego.y - self.blocker_xy[1])
            if d <= self.TRIGGER_DISTANCE:
                self.phase = "waiting"
                self._wait_tick = scene.tick
        elif self.phase == "waiting" and (scene.tick - self._wait_tick) * scene.dt >= self.STOP_TIME:
            if self.BLOCKER in backend.vehicle_ids():
                backend.ls.vehicle.remove(self.BLOCKER)
            self.phase = "gone"
            self.status.notes.append("blocker left")
        self.check_timeout(scene, self.phase == "gone", self.timeout_s,
                           "wait for the blocked junction to clear")
