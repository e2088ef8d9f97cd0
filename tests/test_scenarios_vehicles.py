"""Vehicle scenarios (envs/scenarios/vehicles.py): hard braking, parked cars, cut-ins, emergency vehicle,
highway merges and exits, on procedural maps and on Bench2Drive routes (skipped without shared data).

libsumo runs ONE simulation per process: every environment made here is closed by the `make_env`
fixture, and a test only steps the environment it reset last.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import B2D, SHARED_DATA, drive, ego_s, route_projection

from envs.route_graph import build_route, join_pieces, route_graph
from envs.routes import ScenarioSpec, random_route
from envs.scenarios.base import SCENARIOS, ScenarioContext, ScenarioError, load_library
from envs.scenarios.placement import junction_passes
from envs.scenarios.vehicles import _lane_changes, _project
from envs.scene import AgentKind, Route
from policies.base import make_agent

NO_TRAFFIC = {"vehicles": 0, "pedestrians": 0}
FEW = {"vehicles": 3, "pedestrians": 0}
VEHICLE_TYPES = ("HardBreakRoute", "ParkingExit", "ParkingCutIn", "StaticCutIn", "YieldToEmergencyVehicle",
                 "HighwayCutIn", "HighwayExit", "MergerIntoSlowTraffic", "MergerIntoSlowTrafficV2",
                 "SequentialLaneChange")


def _town_marker(town: str):
    present = B2D.is_file() and (SHARED_DATA / "carla" / "maps" / f"{town}.xodr").is_file()
    return pytest.mark.skipif(not present, reason=f"../shared/data ({town}) not present")


shared_town03 = _town_marker("Town03")
shared_town05 = _town_marker("Town05")


def lane_route(lanes, start: tuple[str, float], end: tuple[str, float], rid: str = "test") -> Route:
    """The cheapest route from (lane id, s) to (lane id, s), lane changes included."""
    g = route_graph(lanes)
    res = g.search((lanes.lane(start[0]), start[1]), [(lanes.lane(end[0]), end[1])])[0]
    assert res is not None
    return build_route(g, join_pieces([res[1]], g), rid)


def spec(env, route: Route, type_name: str, s: float, **params: str) -> ScenarioSpec:
    """A scenario of `type_name` triggered at route distance s."""
    k = int(np.searchsorted(route.cum_length, s))
    x, y = env.lanes.world_to_carla(route.points[k])
    return ScenarioSpec(f"{type_name}_t", type_name, (float(x), float(y), 0.0, 0.0),
                        {key: {"value": v} for key, v in params.items()})


def start(env, route: Route, *specs: ScenarioSpec):
    env.reset(seed=0, options={"route": route, "scenarios": list(specs)})
    return env.scenarios


def agent_in_lane_ahead(env, agent_id: str, tol: float = 0.6) -> bool:
    ag = env.scene.agents
    if agent_id not in ag.ids:
        return False
    k = ag.index(agent_id)
    lat, s = _project(env.route, ag.box[k, :2])
    return abs(lat) < tol and s > ego_s(env)


def _ticks_in_lane_ahead(env, sc, agent_id: str, tol: float, steps: int) -> list[int]:
    """Ticks (up to the fourth) at which `agent_id` is in the ego lane ahead of the ego while lane_follow
    drives; it may be there only once `sc` has triggered."""
    got: list[int] = []

    def on_step(env, reward, info):
        if agent_in_lane_ahead(env, agent_id, tol=tol):
            assert sc.status.triggered
            got.append(info["tick"])
        return len(got) > 3

    drive(env, make_agent("lane_follow"), steps, on_step=on_step)
    return got


# ---------------------------------------------------------------------------- registry / sampler
def test_all_types_registered_with_defaults_and_differences():
    load_library()
    for t in VEHICLE_TYPES:
        cls = SCENARIOS[t]
        assert cls.type_name == t
        assert cls.differs_from_carla and "\n" not in cls.differs_from_carla
        assert cls.key_moment_s > 0
    assert SCENARIOS["ParkingExit"].defaults["front_vehicle_distance"] == "20"
    assert SCENARIOS["ParkingExit"].defaults["behind_vehicle_distance"] == "10"
    assert SCENARIOS["StaticCutIn"].defaults == {"distance": "100", "direction": "right"}
    assert SCENARIOS["YieldToEmergencyVehicle"].defaults == {"distance": "140"}
    assert SCENARIOS["HighwayExit"].defaults["source_dist_interval"] == "20,50"
    assert SCENARIOS["MergerIntoSlowTraffic"].defaults["flow_speed"] == "10"


def test_sample_params_are_accepted(make_env):
    env = make_env(map="highway", traffic=NO_TRAFFIC)
    route = lane_route(env.lanes, ("main_in_0", 300.0), ("main_mid_0", 300.0))
    ctx = ScenarioContext(None, env.lanes, route, "r", np.random.default_rng(0), lambda *a: None)
    rng = np.random.default_rng(3)
    for t in VEHICLE_TYPES:
        cls = SCENARIOS[t]
        for _ in range(5):
            params = cls.sample_params(rng)
            sc = cls(ScenarioSpec("x", t, None, params), ctx)  # unknown / malformed parameters raise
            for key in params:
                assert key in cls.defaults
            if "source_dist_interval" in params:
                lo, hi = sc.interval_param("source_dist_interval")
                assert 0 < lo < hi
            if "distance" in params:
                assert sc.float_param("distance") > 0
    with pytest.raises(ScenarioError, match="unknown parameter 'bogus'"):
        SCENARIOS["StaticCutIn"](ScenarioSpec("x", "StaticCutIn", None, {"bogus": {"value": "1"}}), ctx)


def test_candidate_triggers_follow_topology(make_env):
    env = make_env(map="highway", traffic=NO_TRAFFIC)
    lanes = env.lanes
    main = lane_route(lanes, ("main_in_0", 300.0), ("main_mid_0", 300.0))
    ramp = lane_route(lanes, ("on_ramp_0", 150.0), ("main_mid_0", 300.0))
    exit_ = lane_route(lanes, ("main_mid_2", 50.0), ("off_ramp_0", 150.0))
    c = {t: {n: SCENARIOS[t].candidate_triggers(r, lanes) for n, r in
             (("main", main), ("ramp", ramp), ("exit", exit_))} for t in VEHICLE_TYPES}
    # HighwayCutIn: ego on the main road shortly before the on-ramp joins (junction h1 at ~299 m).
    h1 = junction_passes(main, lanes)[0]
    assert len(c["HighwayCutIn"]["main"]) and np.all(c["HighwayCutIn"]["main"] < h1.entry_s)
    assert np.all(c["HighwayCutIn"]["main"] > h1.entry_s - 65.0)
    assert not len(c["HighwayCutIn"]["ramp"]) and not len(c["HighwayCutIn"]["exit"])
    # Mergers: only on the route coming from the ramp; V1 after the merge, V2 on the ramp before it.
    assert len(c["MergerIntoSlowTraffic"]["ramp"]) and not len(c["MergerIntoSlowTraffic"]["main"])
    lc = _lane_changes(ramp, lanes)[0][0]
    assert np.all(c["MergerIntoSlowTraffic"]["ramp"] < lc)
    v2 = c["MergerIntoSlowTrafficV2"]["ramp"]
    assert len(v2) and np.all(v2 < ramp.cum_length[np.flatnonzero(ramp.lane == lanes.lane("on_ramp_0"))[-1]])
    # HighwayExit: before the route's lane changes towards the exit.
    assert len(c["HighwayExit"]["exit"]) and not len(c["HighwayExit"]["main"])
    assert len(c["SequentialLaneChange"]["exit"]) and not len(c["SequentialLaneChange"]["main"])
    # StaticCutIn needs a lane on the right: main_in_0 has none, main_merge_1 has.
    assert np.all(c["StaticCutIn"]["main"] > 250.0)
    assert c["ParkingExit"]["main"].tolist() == [0.0]
    # urban grid: no highway types
    grid = make_env(traffic=NO_TRAFFIC)
    r = random_route(grid.lanes, np.random.default_rng(1), 400.0, 600.0)
    for t in ("HighwayCutIn", "HighwayExit", "MergerIntoSlowTraffic", "MergerIntoSlowTrafficV2"):
        assert not len(SCENARIOS[t].candidate_triggers(r, grid.lanes)), t
    assert len(SCENARIOS["ParkingCutIn"].candidate_triggers(r, grid.lanes))


# ------------------------------------------------------------------------------ procedural maps
def test_hard_break_lead_and_traffic_ahead_stop(make_env):
    env = make_env(map="highway", traffic=NO_TRAFFIC)
    route = lane_route(env.lanes, ("main_mid_1", 20.0), ("main_out_1", 100.0))
    (sc,) = start(env, route, spec(env, route, "HardBreakRoute", 60.0))
    speeds: list[float] = []

    def on_step(env, reward, info):
        if sc.status.triggered:
            speeds.append(env.backend.ls.vehicle.getSpeed(sc.LEAD))
        return len(speeds) >= 100

    drive(env, make_agent("lane_follow"), 600, on_step=on_step)
    assert sc.status.triggered and speeds[0] > 3.0
    stop = next(k for k, v in enumerate(speeds) if v < 0.1)
    assert stop * 0.05 <= (speeds[0] / 8.0) + 0.5  # 8 m/s^2
    assert max(speeds[stop:]) < 0.1
    lat, s = route_projection(env.route, np.asarray(env.backend.ls.vehicle.getPosition(sc.LEAD)))
    assert lat < 1.0 and s > ego_s(env)


def test_parking_exit_parks_around_start_and_ego_leaves(make_env):
    env = make_env(traffic=NO_TRAFFIC)
    route = random_route(env.lanes, np.random.default_rng(4), 250.0, 400.0)
    (sc,) = start(env, route, spec(env, route, "ParkingExit", 0.0, front_vehicle_distance="9",
                                   behind_vehicle_distance="9"))
    env.step(np.zeros(3, np.float32))
    ag = env.scene.agents
    rows = {}
    for name in ("front", "behind"):
        k = ag.index(f"sc_parkexit_{name}_{sc.uid}")
        assert ag.kind[k] == AgentKind.PARKED_VEHICLE and ag.speed[k] == 0.0
        rows[name] = (np.hypot(*(ag.box[k, :2] - route.points[0])), *_project(route, ag.box[k, :2]))
    ego = np.array([env.scene.ego.x, env.scene.ego.y])
    fwd = np.array([np.cos(env.scene.ego.yaw), np.sin(env.scene.ego.yaw)])
    front_xy = ag.box[ag.index(f"sc_parkexit_front_{sc.uid}"), :2]
    behind_xy = ag.box[ag.index(f"sc_parkexit_behind_{sc.uid}"), :2]
    assert (front_xy - ego) @ fwd == pytest.approx(9.0, abs=1.0)  # in front of the ego's start
    assert (behind_xy - ego) @ fwd == pytest.approx(-9.0, abs=1.0)  # behind it
    for name in ("front", "behind"):
        lateral = (ag.box[ag.index(f"sc_parkexit_{name}_{sc.uid}"), :2] - ego) @ np.array([-fwd[1], fwd[0]])
        assert lateral < -1.5  # at the right kerb, beside the ego's lane
    infractions: list[dict] = []

    def on_step(env, reward, info):
        infractions.extend(info["infractions"])
        return ego_s(env) > 30.0

    drive(env, make_agent("lane_follow"), 400, on_step=on_step)
    assert ego_s(env) > 30.0
    assert not [i for i in infractions if i["type"].startswith("collision")]
    assert any("leave the parking spot" in n for n in sc.status.notes)


def test_parking_cut_in_pulls_into_ego_lane(make_env):
    env = make_env(traffic=NO_TRAFFIC)
    route = random_route(env.lanes, np.random.default_rng(4), 250.0, 400.0)
    s_trig = float(SCENARIOS["ParkingCutIn"].candidate_triggers(route, env.lanes)[0])
    (sc,) = start(env, route, spec(env, route, "ParkingCutIn", s_trig))
    env.step(np.zeros(3, np.float32))
    ag = env.scene.agents
    k = ag.index(sc.ADVERSARY)
    lat0, s0 = _project(route, ag.box[k, :2])
    assert lat0 < -1.5 and s0 == pytest.approx(s_trig + 35.0, abs=1.5)  # parked on the right
    kb = ag.index(sc.BLOCKER)
    assert ag.kind[kb] == AgentKind.PARKED_VEHICLE
    assert _project(route, ag.box[kb, :2])[1] == pytest.approx(s_trig + 28.0, abs=1.5)
    seen: list[float] = []

    def on_step(env, reward, info):
        if not sc.status.triggered:
            assert not agent_in_lane_ahead(env, sc.ADVERSARY)
        elif agent_in_lane_ahead(env, sc.ADVERSARY, tol=0.4):
            seen.append(env.scene.agents.speed[env.scene.agents.index(sc.ADVERSARY)])
        return len(seen) > 5

    drive(env, make_agent("lane_follow"), 500, on_step=on_step)
    assert sc.status.triggered and len(seen) > 5 and seen[-1] > 3.0


def test_static_cut_in_from_queue(make_env):
    env = make_env(map="highway", traffic=FEW)
    route = lane_route(env.lanes, ("main_mid_1", 20.0), ("main_out_1", 100.0))
    (sc,) = start(env, route, spec(env, route, "StaticCutIn", 30.0, distance="41"))
    env.step(np.zeros(3, np.float32))
    ls = env.backend.ls
    for vid in sc._queue:
        assert ls.vehicle.getLaneID(vid) == "main_mid_0" and ls.vehicle.getSpeed(vid) == 0.0
    ag = env.scene.agents
    lat0, s0 = _project(route, ag.box[ag.index(sc.ADVERSARY), :2])
    assert lat0 < -3.0 and s0 == pytest.approx(30.0 + 41.0 + 22.0, abs=2.0)
    got = _ticks_in_lane_ahead(env, sc, sc.ADVERSARY, 0.4, 500)
    assert sc.status.triggered and got and got[0] > sc.status.trigger_tick


def test_yield_to_emergency_vehicle_lane_follow_fails(make_env):
    env = make_env(map="highway", traffic=FEW)
    route = lane_route(env.lanes, ("main_mid_1", 20.0), ("main_out_1", 300.0))
    (sc,) = start(env, route, spec(env, route, "YieldToEmergencyVehicle", 60.0, distance="30"))
    gaps: list[tuple[float, float]] = []
    inf: list[dict] = []

    def on_step(env, reward, info):
        inf.extend(i for i in info["infractions"] if i["type"] == "yield_emergency_vehicle_infraction")
        ag = env.scene.agents
        if sc.EV in ag.ids:
            k = ag.index(sc.EV)
            assert ag.kind[k] == AgentKind.EMERGENCY
            lat, s = _project(env.route, ag.box[k, :2])
            gaps.append((ego_s(env) - s, abs(lat)))
        return bool(inf)

    drive(env, make_agent("lane_follow"), 800, on_step=on_step)
    assert len(gaps) > 20
    assert all(g > 0 for g, _ in gaps)  # always behind the ego on its route
    assert max(lat for _, lat in gaps) < 1.0  # in the ego's lane
    assert min(g for g, _ in gaps) < gaps[0][0] - 5.0  # it closed in (then follows at a safe gap)
    assert len(inf) == 1 and env.record()["infractions"]["yield_emergency_vehicle_infractions"]


def test_highway_cut_in_from_on_ramp(make_env):
    env = make_env(map="highway", traffic=NO_TRAFFIC)
    route = lane_route(env.lanes, ("main_in_0", 150.0), ("main_mid_0", 300.0))
    s_trig = float(SCENARIOS["HighwayCutIn"].candidate_triggers(route, env.lanes)[0])
    (sc,) = start(env, route, spec(env, route, "HighwayCutIn", s_trig))
    ramp = env.lanes.lane("on_ramp_0")
    states: list[str] = []
    got: list[float] = []

    def on_step(env, reward, info):
        ag = env.scene.agents
        if sc.CAR in ag.ids:
            xy = ag.box[ag.index(sc.CAR), :2]
            near = env.lanes.nearest_lanes(float(xy[0]), float(xy[1]), radius=2.0)
            states.append("ramp" if near and near[0][0] == ramp else "other")
            if agent_in_lane_ahead(env, sc.CAR, tol=0.4):
                got.append(ego_s(env))
        return len(got) > 3

    drive(env, make_agent("lane_follow"), 900, on_step=on_step)
    assert sc.status.triggered and states and states[0] == "ramp"  # it starts on the on-ramp
    assert got, "the ramp car never got into the ego lane ahead of the ego"


def _flow_on_lane(env, prefix: str, lane_ids: set[str]) -> list[str]:
    ls = env.backend.ls
    return [v for v in ls.vehicle.getIDList() if v.startswith(prefix) and ls.vehicle.getLaneID(v) in lane_ids]


def test_merger_into_slow_traffic_fills_target_lane(make_env):
    env = make_env(map="highway", traffic=NO_TRAFFIC)
    route = lane_route(env.lanes, ("on_ramp_0", 150.0), ("main_mid_0", 300.0))
    s_trig = float(SCENARIOS["MergerIntoSlowTraffic"].candidate_triggers(route, env.lanes)[0])
    (sc,) = start(env, route, spec(env, route, "MergerIntoSlowTraffic", s_trig, flow_speed="9"))
    assert sc.flow.lane_index == 0 and sc.flow.edges[:2] == ["main_in", "main_merge"]  # behind, main road
    speeds: list[float] = []

    def on_step(env, reward, info):
        if sc.status.triggered and sc.seconds_since_trigger(env.scene) > 4.0:
            ids = _flow_on_lane(env, sc.PREFIX, {"main_merge_1"})
            speeds.extend(env.backend.ls.vehicle.getSpeed(v) for v in ids)
            return True
        return False

    drive(env, make_agent("lane_follow"), 800, on_step=on_step)
    assert sc.status.triggered
    assert len(speeds) >= 3  # the target lane beside the ego is full of flow vehicles
    assert max(speeds) <= 9.0 + 0.5


def test_merger_into_slow_traffic_v2_flow_on_main_road(make_env):
    env = make_env(map="highway", traffic=NO_TRAFFIC)
    route = lane_route(env.lanes, ("on_ramp_0", 150.0), ("main_mid_0", 300.0))
    s_trig = float(SCENARIOS["MergerIntoSlowTrafficV2"].candidate_triggers(route, env.lanes)[0])
    (sc,) = start(env, route, spec(env, route, "MergerIntoSlowTrafficV2", s_trig))
    assert env.lanes.lane_ids[env.route.lane[int(np.searchsorted(route.cum_length, s_trig))]] == "on_ramp_0"
    for _ in range(3):
        env.step(np.zeros(3, np.float32))
    drive(env, make_agent("lane_follow"), 300, on_step=lambda env, r, i: sc.status.triggered)
    for _ in range(20):
        env.step(np.array([0.3, 0.0, 0.0], np.float32))
    ids = _flow_on_lane(env, sc.PREFIX, {"main_in_0", "main_merge_1", ":h1_1_0"})
    assert len(ids) >= 3


def test_highway_exit_flow_on_exit_lane(make_env):
    env = make_env(map="highway", traffic=NO_TRAFFIC)
    route = lane_route(env.lanes, ("main_mid_2", 50.0), ("off_ramp_0", 150.0))
    s_trig = float(SCENARIOS["HighwayExit"].candidate_triggers(route, env.lanes)[0])
    (sc,) = start(env, route, spec(env, route, "HighwayExit", s_trig, flow_speed="13"))
    assert env.lanes.lane_ids[sc._src[0]] == "main_mid_0"  # the lane the route must cross into
    drive(env, make_agent("lane_follow"), 600, on_step=lambda env, r, i: sc.status.triggered)
    for _ in range(40):
        env.step(np.array([0.3, 0.0, 0.0], np.float32))
    ids = _flow_on_lane(env, sc.PREFIX, {"main_mid_0"})
    assert len(ids) >= 3
    assert all(env.backend.ls.vehicle.getSpeed(v) <= 13.5 for v in ids)


def test_sequential_lane_change_passes_after_200m(make_env):
    env = make_env(map="highway", traffic=NO_TRAFFIC)
    route = lane_route(env.lanes, ("main_mid_2", 50.0), ("off_ramp_0", 150.0))
    s_trig = float(SCENARIOS["SequentialLaneChange"].candidate_triggers(route, env.lanes)[0])
    (sc,) = start(env, route, spec(env, route, "SequentialLaneChange", s_trig))
    drive(env, make_agent("lane_follow"), 1200, on_step=lambda env, r, i: bool(sc.status.notes))
    assert sc.status.triggered and ego_s(env) >= s_trig + 200.0
    assert any("lane changes" in n for n in sc.status.notes)
    assert env.record()["infractions"]["scenario_timeouts"] == []


def test_static_cut_in_without_side_lane_raises(make_env):
    env = make_env(map="highway", traffic=NO_TRAFFIC)
    route = lane_route(env.lanes, ("main_in_0", 100.0), ("main_mid_0", 100.0))
    with pytest.raises(ScenarioError, match="no right side lane"):
        start(env, route, spec(env, route, "StaticCutIn", 20.0, distance="41"))


# ------------------------------------------------------------------------ Bench2Drive routes
def _b2d_env(make_env, town: str, rid: str):
    env = make_env(map=str(SHARED_DATA / "carla" / "maps" / f"{town}.xodr"), routes=str(B2D), route_ids=[rid],
                   traffic={"vehicles": 5, "pedestrians": 0})
    env.reset(seed=0, options={"route_id": rid})
    return env


@shared_town03
@pytest.mark.parametrize("rid", ["26393", "26435"])
def test_b2d_parking_exit(make_env, rid):
    env = _b2d_env(make_env, "Town03", rid)
    (sc,) = env.scenarios
    assert sc.type_name == "ParkingExit" and sc.float_param("front_vehicle_distance") == 9.0
    env.step(np.zeros(3, np.float32))
    ag = env.scene.agents
    ego = np.array([env.scene.ego.x, env.scene.ego.y])
    fwd = np.array([np.cos(env.scene.ego.yaw), np.sin(env.scene.ego.yaw)])
    along = {
        n: float((ag.box[ag.index(f"sc_parkexit_{n}_{sc.uid}"), :2] - ego) @ fwd) for n in ("front", "behind")
    }
    assert along["front"] == pytest.approx(9.0, abs=1.5) and along["behind"] == pytest.approx(-9.0, abs=1.5)
    for n in ("front", "behind"):
        lateral = (ag.box[ag.index(f"sc_parkexit_{n}_{sc.uid}"), :2] - ego) @ np.array([-fwd[1], fwd[0]])
        assert lateral < -2.0  # in the parking lane on the right
    drive(env, make_agent("lane_follow"), 600, on_step=lambda env, r, i: ego_s(env) > 30.0)
    assert ego_s(env) > 30.0  # the ego got out


@shared_town05
def test_b2d_parking_cut_in(make_env):
    env = _b2d_env(make_env, "Town05", "24759")
    (sc,) = env.scenarios
    assert sc.type_name == "ParkingCutIn"
    got = _ticks_in_lane_ahead(env, sc, sc.ADVERSARY, 0.5, 600)
    assert got, "the parked car never pulled into the ego lane ahead of the ego"


@shared_town05
def test_b2d_static_cut_in(make_env):
    env = _b2d_env(make_env, "Town05", "26396")
    (sc,) = env.scenarios
    assert sc.type_name == "StaticCutIn" and sc.float_param("distance") == 41.0
    got = _ticks_in_lane_ahead(env, sc, sc.ADVERSARY, 0.5, 600)
    assert got and got[0] > sc.status.trigger_tick


@shared_town03
def test_b2d_yield_to_emergency_vehicle(make_env):
    env = _b2d_env(make_env, "Town03", "25378")
    (sc,) = env.scenarios
    assert sc.type_name == "YieldToEmergencyVehicle" and sc.float_param("distance") == 30.0
    behind: list[float] = []

    def on_step(env, reward, info):
        ag = env.scene.agents
        if sc.EV in ag.ids:
            behind.append(ego_s(env) - _project(env.route, ag.box[ag.index(sc.EV), :2])[1])
        return False

    *_, infractions = drive(env, make_agent("lane_follow"), 1200, on_step=on_step)
    assert behind and all(b > 0 for b in behind)
    assert [i for i in infractions if i["type"] == "yield_emergency_vehicle_infraction"]
