"""Junction-flow scenarios (envs/scenarios/junction_flows.py): where the flow comes from and goes, when it
starts, its speed and gaps, the frozen lights, the timeout, the sampler hooks, and what lane_follow does
when it meets the flow. Procedural urban_grid tests run everywhere; the Bench2Drive routes need
../shared/data."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from helpers import B2D, NO_CAMERA, SHARED_DATA

import envs.scenarios.junction_flows as jf
from envs.route_graph import Piece, build_route, route_graph
from envs.routes import ScenarioSpec
from envs.scenarios.base import SCENARIOS, ScenarioError, load_library
from envs.scenarios.placement import junction_of, junction_passes, lane_heading, normal_successors, wrap
from policies.base import make_agent

load_library()
FLOW_TYPES = [
    "NonSignalizedJunctionLeftTurn",
    "SignalizedJunctionLeftTurn",
    "NonSignalizedJunctionRightTurn",
    "SignalizedJunctionRightTurn",
    "NonSignalizedJunctionLeftTurnEnterFlow",
    "SignalizedJunctionLeftTurnEnterFlow",
    "EnterActorFlow",
    "InterurbanActorFlow",
    "InterurbanAdvancedActorFlow",
]
NO_TRAFFIC = {"vehicles": 0, "pedestrians": 0}
SOME_TRAFFIC = {"vehicles": 3, "pedestrians": 0}
DT = 0.05

# urban_grid: J1_1 has traffic lights (r + c even), J1_2 is a priority-stop junction. The ego arrives from
# the south (J0_c -> J1_c, heading north). Per type: junction, ego turn, expected flows as
# (where they come from seen from the ego, what they do at the junction, do they leave on the ego's exit
# road), whether the path is already populated when the flow starts.
GRID_CASES = {
    "NonSignalizedJunctionLeftTurn": ("J1_2", "left", [("opposite", "straight", False)], False),
    "SignalizedJunctionLeftTurn": ("J1_1", "left", [("opposite", "straight", False)], False),
    "NonSignalizedJunctionRightTurn": ("J1_2", "right", [("from_left", "straight", True)], True),
    "SignalizedJunctionRightTurn": ("J1_1", "right", [("from_left", "straight", True)], True),
    "NonSignalizedJunctionLeftTurnEnterFlow": ("J1_2", "left", [("opposite", "right", True)], False),
    "SignalizedJunctionLeftTurnEnterFlow": ("J1_1", "left", [("opposite", "right", True)], False),
    "EnterActorFlow": ("J1_2", "right", [("from_left", "straight", True)], True),
    "InterurbanActorFlow": ("J1_2", "left", [("opposite", "straight", False)], False),
    "InterurbanAdvancedActorFlow": (
        "J1_2", "left", [("from_left", "straight", False), ("from_right", "straight", True)], False,
    ),
}
GRID_PARAMS = {"flow_speed": {"value": "12"}, "source_dist_interval": {"from": "20", "to": "30"}}


# ----------------------------------------------------------------------------------------- helpers
def turn_route(lanes, junction: str, turn: str, before: float = 70.0, after: float = 50.0):
    """A route arriving at `junction` from the south (edge J0_c -> J1_c) and turning `turn` there."""
    col = junction.split("_")[1]
    lane = lanes.lane(f"J0_{col}to{junction}_1")
    graph = route_graph(lanes)
    yaw = lane_heading(lanes, lane, at_end=True)
    out = next(n for _, n in normal_successors(lanes, lane)
               if _turn(yaw, lane_heading(lanes, n, at_end=False)) == turn)
    length = float(graph.length[lane])
    ((_, pieces),) = graph.search((lane, max(length - before, 0.0)), [(out, after)])
    return build_route(graph, pieces, f"grid-{junction}-{turn}")


def one_lane_route(lanes):
    """60 m along one street, no junction."""
    graph = route_graph(lanes)
    return build_route(graph, [Piece(lanes.lane("J0_1toJ1_1_1"), 0.0, 60.0)], "street")


def _turn(yaw_in: float, yaw_out: float) -> str:
    d = wrap(yaw_out - yaw_in)
    return "straight" if abs(d) < math.radians(30) else ("left" if d > 0 else "right")


def _relation(ego_yaw: float, yaw: float) -> str:
    d = wrap(yaw - ego_yaw)
    if abs(d) < math.radians(45):
        return "same"
    if abs(d) > math.radians(135):
        return "opposite"
    return "from_right" if d > 0 else "from_left"


def spec_at(lanes, route, type_name: str, s: float, params: dict | None = None) -> ScenarioSpec:
    k = int(np.searchsorted(route.cum_length, s))
    cx, cy = lanes.world_to_carla(route.points[k])
    return ScenarioSpec(f"{type_name}_1", type_name, (float(cx), float(cy), 0.0, 0.0), params or {})


def grid_episode(make_env, type_name: str, traffic: dict, params: dict | None = GRID_PARAMS):
    junction, turn, _, _ = GRID_CASES[type_name]
    env = make_env(map="urban_grid", traffic=traffic, camera=NO_CAMERA)
    route = turn_route(env.lanes, junction, turn)
    jp = next(j for j in junction_passes(route, env.lanes) if j.junction == junction)
    env.reset(seed=0, options={"route": route, "scenarios": [spec_at(env.lanes, route, type_name,
                                                                      jp.entry_s - 25.0, params)]})
    (sc,) = env.scenarios
    assert sc.type_name == type_name
    return env, sc, jp


@dataclass
class FlowLog:
    """What the flow vehicles did, tick by tick."""

    trigger_tick: int | None = None
    first_seen: dict[str, int] = field(default_factory=dict)  # vehicle -> tick it entered SUMO
    early: list[str] = field(default_factory=list)  # flow vehicles that existed before the trigger
    lanes: dict[str, list[str]] = field(default_factory=dict)  # vehicle -> lanes in order
    speed_on: dict[tuple[str, str], float] = field(default_factory=dict)  # (vehicle, lane) -> max speed
    insert_gap: dict[str, float] = field(default_factory=dict)  # vehicle -> distance to its predecessor
    waited: int = 0  # ticks lane_follow stood still because of a flow vehicle
    collisions: list[str] = field(default_factory=list)  # flow vehicles the ego collided with
    infractions: list[dict] = field(default_factory=list)


def observe(env, sc, steps: int, agent=None, brake_after_trigger: bool = False, until=None) -> FlowLog:
    """Step the episode `steps` ticks (lane_follow drives; optionally full brake once triggered) and log
    every scenario flow vehicle (ids sc_flow*)."""
    ls = env.backend.ls
    agent = agent or make_agent("lane_follow")
    agent.reset(env.route)
    log = FlowLog()
    for _ in range(steps):
        out = agent.act(env.observation(), env.scene)
        action = out.control.as_array()
        if brake_after_trigger and sc.status.triggered:
            action = np.array([0.0, 1.0, 0.0], np.float32)
        _, _, terminated, truncated, info = env.step(action)
        tick = info["tick"]
        log.infractions += info["infractions"]
        log.collisions += [i["other_id"] for i in info["infractions"] if i["type"] == "collision_vehicle"
                           and (i["other_id"] or "").startswith("sc_flow")]
        if (out.info.get("cause_id") or "").startswith("sc_flow") and env.scene.ego.speed < 1.0:
            log.waited += 1
        if sc.status.triggered and log.trigger_tick is None:
            log.trigger_tick = sc.status.trigger_tick
        present = [v for v in ls.vehicle.getIDList() if v.startswith("sc_flow")]
        pending = [v for v in ls.simulation.getPendingVehicles() if v.startswith("sc_flow")]
        if log.trigger_tick is None:
            log.early += present + pending
        pos = {v: np.asarray(ls.vehicle.getPosition(v)) for v in present}
        for v in present:
            if v not in log.first_seen:
                log.first_seen[v] = tick
                stem, n = v.rsplit("_", 1)
                prev = f"{stem}_{int(n) - 1}"
                if prev in pos:
                    log.insert_gap[v] = float(np.hypot(*(pos[v] - pos[prev])))
            lane = ls.vehicle.getLaneID(v)
            seq = log.lanes.setdefault(v, [])
            if not seq or seq[-1] != lane:
                seq.append(lane)
            key = (v, lane)
            log.speed_on[key] = max(log.speed_on.get(key, 0.0), ls.vehicle.getSpeed(v))
        if terminated or truncated or (until is not None and until(env)):
            break
    return log


@dataclass
class Crossing:
    vehicle: str
    approach: int  # LaneGraph lane before the junction
    exit: int  # lane after it
    approach_speed: float  # the vehicle's top speed on its approach lane


def crossings(env, log: FlowLog, junction: str) -> list[Crossing]:
    """Flow vehicles that drove through `junction`: the lane they came on and the lane they left on."""
    lanes = env.lanes
    out = []
    for v, seq in log.lanes.items():
        idx = [k for k, ln in enumerate(seq)
               if ln.startswith(":") and junction_of(lanes, lanes.lane(ln)) == junction]
        if not idx or idx[0] == 0 or idx[-1] == len(seq) - 1:
            continue
        before, after = seq[idx[0] - 1], seq[idx[-1] + 1]
        out.append(Crossing(v, lanes.lane(before), lanes.lane(after), log.speed_on[(v, before)]))
    return out


def assert_flow_behaviour(env, sc, jp, log: FlowLog, expected: list[tuple[str, str, bool]], speed: float,
                          gap: tuple[float, float] | None, min_crossings: int = 2, slack_s: float = 0.1
                          ) -> None:
    lanes = env.lanes
    assert log.trigger_tick is not None, "the ego never reached the trigger point"
    assert not log.early, f"flow vehicles before the trigger: {log.early[:3]}"
    assert log.first_seen, "no flow vehicle entered the simulation"
    assert min(log.first_seen.values()) <= log.trigger_tick + 3  # starts right at the trigger
    ego_yaw = lane_heading(lanes, jp.in_lane, at_end=True)
    exit_edge = lanes.edge_of_lane[jp.out_lane]
    got = crossings(env, log, jp.junction)
    found = set()
    for c in got:
        yaw_in = lane_heading(lanes, c.approach, at_end=True)
        kind = (_relation(ego_yaw, yaw_in), _turn(yaw_in, lane_heading(lanes, c.exit, at_end=False)),
                lanes.edge_of_lane[c.exit] == exit_edge)
        assert kind in expected, f"{c.vehicle} came {kind}, expected one of {expected}"
        found.add(kind)
    assert found == set(expected), f"flows seen {found}, expected {expected}"
    for kind in expected:
        n = sum(1 for c in got if (_relation(ego_yaw, lane_heading(lanes, c.approach, True))) == kind[0])
        assert n >= min_crossings, f"only {n} flow vehicles {kind} crossed junction {jp.junction}"
    top = np.median([c.approach_speed for c in got])
    assert abs(top - speed) <= 0.1 * speed, f"flow speed {top:.1f} m/s, expected {speed}"
    if gap is not None:
        gaps = [g for v, g in log.insert_gap.items() if log.first_seen[v] > log.trigger_tick + 3]
        assert len(gaps) >= 2
        # spawned once the previous one is a gap from the source, inserted a SUMO step later (or a few
        # more when background traffic was in the way: `slack_s`)
        assert min(gaps) >= gap[0] - 0.5 and max(gaps) <= gap[1] + speed * (DT + slack_s) + 1.0, gaps


# ---------------------------------------------------------------------------- procedural (urban_grid)
@pytest.mark.parametrize("type_name", FLOW_TYPES)
def test_grid_flow_source_speed_gaps(make_env, type_name):
    """The flow starts at the trigger, comes from the approach the type defines, does what the type
    defines at the junction (crossing / turning into the ego's exit road), at flow_speed, with source gaps
    within source_dist_interval; types with initial actors start with the path populated."""
    env, sc, jp = grid_episode(make_env, type_name, NO_TRAFFIC)
    _, _, expected, initial = GRID_CASES[type_name]
    log = observe(env, sc, 700, brake_after_trigger=True)
    assert_flow_behaviour(env, sc, jp, log, expected, 12.0, (20.0, 30.0))
    at_start = [v for v, t in log.first_seen.items() if t <= log.trigger_tick + 2]
    if initial:
        assert len(at_start) >= 2 * len(expected), at_start  # populated path + the first at the source
    else:
        assert len(at_start) == len(expected), at_start  # one vehicle per flow, at its source


@pytest.mark.parametrize("type_name", FLOW_TYPES)
def test_grid_lane_follow_waits_or_collides(make_env, type_name):
    """lane_follow meets the flow: it either stops for a flow vehicle on its path or collides with one,
    and it still gets through (no deadlock), which settles the timeout criterion as passed."""
    env, sc, _ = grid_episode(make_env, type_name, SOME_TRAFFIC, params=None)
    log = observe(env, sc, 2500, until=lambda e: any("managed" in n for n in sc.status.notes))
    yielded = sum(f.yields for f in sc.flows)  # flow vehicles brake for an ego in their path
    assert log.waited > 0 or log.collisions or yielded, "lane_follow and the flow never met"
    assert any("managed" in n for n in sc.status.notes), sc.status.notes
    assert not any(i["type"] == "scenario_timeout" for i in log.infractions)


def test_flow_vehicle_brakes_for_a_vehicle_in_its_path(make_env):
    """A flow vehicle brakes to a stop, short of it, for a box standing on its path ahead (scenario-runner's
    flow agents stop for obstacles in their path) and drives on once the path is free."""
    env, sc, _ = grid_episode(make_env, "SignalizedJunctionLeftTurn", NO_TRAFFIC)
    flow = sc.flows[0]
    ls = env.backend.ls
    moving: list[str] = []
    agent = make_agent("lane_follow")
    agent.reset(env.route)
    for _ in range(900):
        out = agent.act(env.observation(), env.scene)
        env.step(np.array([0.0, 1.0, 0.0], np.float32) if sc.status.triggered else out.control.as_array())
        moving = [v for v in flow.live if v in ls.vehicle.getIDList() and ls.vehicle.getSpeed(v) > 8.0]
        if moving:
            break
    assert moving
    vid = moving[0]
    d_v = flow._path_d[int(np.argmin(np.hypot(*(flow._path_xy - np.asarray(ls.vehicle.getPosition(vid))).T)))]
    k = int(np.searchsorted(flow._path_d, d_v + 16.0))
    (x0, y0), (x1, y1) = flow._path_xy[k], flow._path_xy[k + 1]
    box = np.array([x0, y0, math.atan2(y1 - y0, x1 - x0), 2.45, 1.0])
    for _ in range(60):
        flow.tick(box, 0.0, 0.05)
        ls.simulationStep()
    assert ls.vehicle.getSpeed(vid) < 0.1 and flow.yields >= 1
    front = np.asarray(ls.vehicle.getPosition(vid))
    assert np.hypot(*(front - box[:2])) > box[3]  # stopped short of the box
    for _ in range(40):
        flow.tick(box + np.array([500.0, 500.0, 0.0, 0.0, 0.0]), 0.0, 0.05)
        ls.simulationStep()
    assert ls.vehicle.getSpeed(vid) > 1.0


def test_signalized_left_turn_freezes_and_restores_lights(make_env):
    """SignalizedJunctionLeftTurn: 5 s with the flow's approach green and the ego's red, then both green
    (ego's links yielding), every other approach red; the light program comes back after the ego left."""
    env, sc, jp = grid_episode(make_env, "SignalizedJunctionLeftTurn", NO_TRAFFIC)
    lanes = env.lanes
    ls = env.backend.ls
    links = ls.trafficlight.getControlledLinks("J1_1")
    ego_edge = lanes.edge_of_lane[jp.in_lane]
    ego_k = [k for k, link in enumerate(links) if link and link[0][0].rsplit("_", 1)[0] == ego_edge]
    flow_k = [k for k, link in enumerate(links) if link and link[0][0].startswith("J2_1toJ1_1")]
    other_k = [k for k in range(len(links)) if k not in ego_k + flow_k]
    assert ego_k and flow_k
    states: list[tuple[float, str]] = []
    programs: set[str] = set()
    agent = make_agent("lane_follow")
    agent.reset(env.route)
    program = ls.trafficlight.getProgram("J1_1")
    for _ in range(2500):
        out = agent.act(env.observation(), env.scene)
        env.step(out.control.as_array())
        if sc.status.triggered and not sc._ended:
            state = ls.trafficlight.getRedYellowGreenState("J1_1")
            states.append((sc.seconds_since_trigger(env.scene), state))
            programs.add(ls.trafficlight.getProgram("J1_1"))
        if sc._ended:
            break
    assert sc._ended, "the ego never got past the junction"
    assert programs == {"online"}  # frozen by link states while the scenario runs
    frozen = [(t, s) for t, s in states if t < 4.9]
    assert frozen
    for _, s in frozen:
        assert all(s[k] == "r" for k in ego_k + other_k) and all(s[k] in "gG" for k in flow_k), s
    later = [s for t, s in states if t > 5.1]
    assert later
    for s in later:
        assert all(s[k] in "gG" for k in ego_k + flow_k) and all(s[k] == "r" for k in other_k), s
    # ended: the light runs its program again
    assert ls.trafficlight.getProgram("J1_1") == program != "online"
    env.step(np.zeros(3))
    assert ls.trafficlight.getRedYellowGreenState("J1_1") not in {s for _, s in states}


def test_timeout_reported_when_the_ego_never_gets_through(make_env, monkeypatch):
    """ScenarioTimeoutTest: an ego standing before the junction gets one scenario_timeout (timeout
    shortened for the test) and the flow stops spawning."""
    monkeypatch.setattr(jf, "FLOW_TIMEOUT_S", 4.0)
    env, sc, _ = grid_episode(make_env, "NonSignalizedJunctionLeftTurn", NO_TRAFFIC)
    log = observe(env, sc, 400, brake_after_trigger=True)
    timeouts = [i for i in log.infractions if i["type"] == "scenario_timeout"]
    assert len(timeouts) == 1 and sc.name in timeouts[0]["message"]
    assert len(env.record()["infractions"]["scenario_timeouts"]) == 1
    stop_tick = log.trigger_tick + int(4.0 / DT) + 1
    assert all(t <= stop_tick + 1 for t in log.first_seen.values())
    assert not any(f.active for f in sc.flows)


def test_nonsignalized_type_leaves_lights_alone(make_env):
    """A non-signalised type placed at a signalised junction (as Bench2Drive's Town03 route 26990 ends up
    in SUMO) sets up and never touches the lights: the program keeps running."""
    env = make_env(map="urban_grid", traffic=NO_TRAFFIC, camera=NO_CAMERA)
    route = turn_route(env.lanes, "J1_1", "left")
    jp = next(j for j in junction_passes(route, env.lanes) if j.junction == "J1_1")
    spec = spec_at(env.lanes, route, "NonSignalizedJunctionLeftTurn", jp.entry_s - 25.0, GRID_PARAMS)
    env.reset(seed=0, options={"route": route, "scenarios": [spec]})
    (sc,) = env.scenarios
    ls = env.backend.ls
    program = ls.trafficlight.getProgram("J1_1")
    log = observe(env, sc, 500, brake_after_trigger=True)
    assert not sc._light_states and ls.trafficlight.getProgram("J1_1") == program != "online"
    assert crossings(env, log, "J1_1")  # the flow still runs (through whatever the light shows)


def test_sampler_hooks(make_env):
    """candidate_triggers: 10-40 m before a junction where the ego turns as the type needs, with lights
    for the signalised types and without for the non-signalised ones; none on a straight road.
    sample_params: Bench2Drive's ranges, and an instance set up at every candidate works."""
    env = make_env(map="urban_grid", traffic=NO_TRAFFIC, camera=NO_CAMERA)
    lanes = env.lanes
    routes = {(j, t): turn_route(lanes, j, t, before=70.0, after=50.0)
              for j in ("J1_1", "J1_2") for t in ("left", "right")}
    straight = one_lane_route(lanes)
    rng = np.random.default_rng(0)
    for type_name in FLOW_TYPES:
        cls = SCENARIOS[type_name]
        assert cls.differs_from_carla and len(cls.differs_from_carla) < 200
        assert len(cls.candidate_triggers(straight, lanes)) == 0
        for (j, t), route in routes.items():
            cand = cls.candidate_triggers(route, lanes)
            jp = next(p for p in junction_passes(route, lanes) if p.junction == j)
            fits = t in cls.ego_turns and (cls.signalized is None or cls.signalized == (j == "J1_1"))
            assert (len(cand) > 0) == fits, (type_name, j, t, cand)
            if not fits:
                continue
            assert np.all(cand >= jp.entry_s - 40.0 - 1e-6) and np.all(cand <= jp.entry_s - 10.0 + 1e-6)
            for s in cand[:: max(1, len(cand) // 3)]:
                params = cls.sample_params(rng)
                speed = float(params["flow_speed"]["value"])
                interval = params["source_dist_interval"]
                lo, hi = float(interval["from"]), float(interval["to"])
                assert cls.speed_range[0] <= speed <= cls.speed_range[1] and 0 < lo < hi
                env.reset(seed=0, options={"route": route, "scenarios": [spec_at(lanes, route, type_name, s,
                                                                                 params)]})
                (sc,) = env.scenarios
                assert sc.jp.junction == j and sc.flow_speed == speed and sc.gap_range == (lo, hi)
                assert sc.flows and not sc.flow_vehicles()


def test_placement_errors(make_env):
    env = make_env(map="urban_grid", traffic=NO_TRAFFIC, camera=NO_CAMERA)
    lanes = env.lanes
    left = turn_route(lanes, "J1_2", "left")
    s = 40.0

    def build(route, type_name, params=None):
        spec = spec_at(lanes, route, type_name, s, params)
        env.reset(seed=0, options={"route": route, "scenarios": [spec]})

    with pytest.raises(ScenarioError, match="unknown parameter 'speed'"):
        build(left, "NonSignalizedJunctionLeftTurn", {"speed": {"value": "3"}})
    with pytest.raises(ScenarioError, match="no traffic lights"):
        build(left, "SignalizedJunctionLeftTurn")  # J1_2 has none
    with pytest.raises(ScenarioError, match=r"route street: scenario InterurbanActorFlow_1 .*no junction"):
        build(one_lane_route(lanes), "InterurbanActorFlow")
    with pytest.raises(ScenarioError, match="given together"):
        build(left, "EnterActorFlow", {"start_actor_flow": {"x": "1", "y": "2", "z": "0"}})
    with pytest.raises(ScenarioError, match="source_dist_interval"):
        build(left, "NonSignalizedJunctionLeftTurn", {"source_dist_interval": {"from": "0", "to": "5"}})
    with pytest.raises(ScenarioError, match="flow_speed"):
        build(left, "InterurbanAdvancedActorFlow", {"flow_speed": {"value": "fast"}})
    with pytest.raises(ScenarioError, match="not on a drivable lane"):
        build(left, "InterurbanActorFlow", {"start_actor_flow": {"x": "-5000", "y": "0", "z": "0"},
                                            "end_actor_flow": {"x": "-5000", "y": "50", "z": "0"}})


# ------------------------------------------------------------------------- Bench2Drive routes (towns)
def _town(town: str):
    present = B2D.is_file() and (SHARED_DATA / "carla" / "maps" / f"{town}.xodr").is_file()
    return [pytest.mark.shared_data, pytest.mark.skipif(not present, reason=f"{town} / routes not present")]


# route id, town, type, expected flows (relation, flow turn, onto the ego's exit road), flow speed
ENTER_RIGHT = [("opposite", "right", True)]
B2D_CASES = [
    pytest.param("26990", "Town03", "NonSignalizedJunctionLeftTurn", [("opposite", "straight", False)], 9.0,
                 marks=_town("Town03")),
    pytest.param("28087", "Town04", "NonSignalizedJunctionLeftTurnEnterFlow", ENTER_RIGHT, 10.0,
                 marks=_town("Town04")),
    pytest.param("28093", "Town04", "NonSignalizedJunctionLeftTurnEnterFlow", ENTER_RIGHT, 9.0,
                 marks=_town("Town04")),
    pytest.param("28099", "Town04", "SignalizedJunctionLeftTurnEnterFlow", ENTER_RIGHT, 8.0,
                 marks=_town("Town04")),
    pytest.param("26956", "Town05", "SignalizedJunctionRightTurn", [("from_left", "straight", True)], 12.0,
                 marks=_town("Town05")),
    pytest.param("26966", "Town05", "SignalizedJunctionRightTurn", [("from_left", "straight", True)], 14.0,
                 marks=_town("Town05")),
    pytest.param("27506", "Town05", "EnterActorFlow", [("from_left", "straight", True)], 12.0,
                 marks=_town("Town05")),
]


@pytest.mark.parametrize(("route_id", "town", "type_name", "expected", "speed"), B2D_CASES)
def test_bench2drive_route_flow(make_env, route_id, town, type_name, expected, speed):
    """The route's flow: starts at the trigger, fills the conflicting / target lane through the junction
    after the trigger at about flow_speed with gaps within the route's source_dist_interval, and
    lane_follow meeting it waits, collides or is yielded to, then gets through."""
    env = make_env(map=str(SHARED_DATA / "carla" / "maps" / f"{town}.xodr"), routes=str(B2D),
                   route_ids=[route_id], traffic=SOME_TRAFFIC, camera=NO_CAMERA)
    env.reset(seed=0, options={"route_id": route_id})
    (sc,) = env.scenarios
    assert sc.type_name == type_name
    spec = env.route_spec.scenarios[0]
    gap = tuple(float(spec.params["source_dist_interval"][k]) for k in ("from", "to"))
    assert sc.flow_speed == speed and sc.gap_range == gap
    jp = sc.jp
    assert jp.entry_s > sc.trigger_s  # the junction after the trigger point
    log = observe(env, sc, 3000, until=lambda e: any("managed" in n for n in sc.status.notes))
    assert_flow_behaviour(env, sc, jp, log, expected, speed, gap, min_crossings=1, slack_s=0.5)
    yielded = sum(f.yields for f in sc.flows)  # flow vehicles brake for an ego in their path
    assert log.waited > 0 or log.collisions or yielded, "lane_follow and the flow never met"
    assert any("managed" in n for n in sc.status.notes), sc.status.notes
