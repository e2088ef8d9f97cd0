"""Overtaking scenarios (envs/scenarios/obstacles.py): the obstacles stand where Bench2Drive's definitions put
them, with their kinds and extents; lane_follow (no lane changes) is blocked by them and a scenario timeout
follows; oncoming flows drive against the ego and stop for it; bicycles ride at their speed; the door
opens into the lane; invading vehicles cut into the ego lane. Procedural-map tests run without shared data;
the Bench2Drive route tests skip when ../shared/data is absent."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import B2D, SHARED_DATA, drive

from envs.route_graph import Piece, build_route, route_graph
from envs.routes import ScenarioSpec
from envs.scenarios.base import SCENARIOS, ScenarioError, load_library
from envs.scene import AgentKind, EgoState, Route
from policies.base import make_agent

FEW = {"vehicles": 2, "pedestrians": 0}
OVERTAKING = (
    "Accident", "AccidentTwoWays", "ConstructionObstacle", "ConstructionObstacleTwoWays", "HazardAtSideLane",
    "HazardAtSideLaneTwoWays", "ParkedObstacle", "ParkedObstacleTwoWays", "VehicleOpensDoorTwoWays",
    "InvadingTurn",
)
TWO_WAYS = {t for t in OVERTAKING if t.endswith("TwoWays")} | {"InvadingTurn"}


def _town(n: int):
    return SHARED_DATA / "carla" / "maps" / f"Town0{n}.xodr"


def town(n: int):
    """Marks a test that needs the Bench2Drive routes and Town0n (skipped when absent)."""
    present = B2D.is_file() and _town(n).is_file()

    def mark(test):
        return pytest.mark.shared_data(pytest.mark.skipif(not present, reason=f"Town0{n} / B2D absent")(test))

    return mark


# ------------------------------------------------------------------------------------ helpers
def lane_route(lanes, lane_id: str, length: float) -> Route:
    return build_route(route_graph(lanes), [Piece(lanes.lane(lane_id), 0.0, length)], "test")


def spec_at(lanes, route: Route, s: float, type_name: str, **params: str) -> ScenarioSpec:
    k = int(np.searchsorted(route.cum_length, s))
    x, y = lanes.world_to_carla(route.points[k])
    return ScenarioSpec(f"{type_name}_1", type_name, (float(x), float(y), 0.0, 0.0),
                        {key: {"value": v} if isinstance(v, str) else v for key, v in params.items()})


def frenet(route: Route, xy) -> tuple[float, float]:
    """(route distance, signed lateral offset, + = right of the route) of a point."""
    d = np.hypot(route.points[:, 0] - xy[0], route.points[:, 1] - xy[1])
    k = int(np.argmin(d))
    yaw = route.yaw[k]
    v = np.asarray(xy) - route.points[k]
    return float(route.cum_length[k]), float(v[0] * math.sin(yaw) - v[1] * math.cos(yaw))


def ego_s(env) -> float:
    return float(env.route.cum_length[env.scene.route_index])


def agent(env, aid: str):
    ag = env.scene.agents
    k = ag.index(aid)
    return ag.kind[k], ag.box[k], ag.speed[k], ag.velocity[k]


def ids_with(env, text: str) -> list[str]:
    return [a for a in env.scene.agents.ids if text in a]


def lane_width_at(env, s: float) -> float:
    k = int(np.searchsorted(env.route.cum_length, s))
    return float(env.lanes.width[env.route.lane[k]])


def run(env, steps: int, on_step=None, policy: str = "lane_follow"):
    return drive(env, make_agent(policy), steps, on_step)


def timeouts(infractions) -> list[dict]:
    return [i for i in infractions if i["type"] == "scenario_timeout"]


def b2d_env(make_env, n: int, route_id: str, **params: str):
    """Town0n route `route_id` of the Bench2Drive file with its scenario (extra params merged in)."""
    env = make_env(map=str(_town(n)), routes=str(B2D), route_ids=[route_id], traffic=FEW)
    spec = env.route_specs[0].scenarios[0]
    merged = {**spec.params, **{k: {"value": v} for k, v in params.items()}}
    env.reset(seed=0, options={"route_id": route_id,
                               "scenarios": [ScenarioSpec(spec.name, spec.type, spec.trigger_point, merged)]})
    (sc,) = env.scenarios
    return env, sc


def procedural(make_env, map_name: str, lane_id: str, length: float, s: float, type_name: str, **params):
    env = make_env(map=map_name, traffic=FEW)
    route = lane_route(env.lanes, lane_id, length)
    spec = spec_at(env.lanes, route, s, type_name, **params)
    env.reset(seed=0, options={"route": route, "scenarios": [spec]})
    (sc,) = env.scenarios
    assert sc.status.implemented and sc.type_name == type_name
    return env, sc


def check_blocked_then_timeout(env, sc, obstacle_s: float, timeout: float):
    """lane_follow stops behind the obstacle, a scenario_timeout is reported `timeout` s after the trigger,
    then the scenario removes its actors and the ego drives on past the obstacle."""
    stopped: list[float] = []
    reported: list[int] = []
    infractions: list[dict] = []

    def on_step(env, reward, info):
        infractions.extend(info["infractions"])
        if env.scene.ego.speed < 0.05 and sc.status.triggered and not reported:
            stopped.append(ego_s(env))
        if timeouts(info["infractions"]):
            reported.append(env.scene.tick)
        return bool(reported) and ego_s(env) > obstacle_s + 10.0

    run(env, int((timeout + 40.0) / 0.05), on_step)
    assert stopped, "lane_follow never stopped for the obstacle"
    assert max(stopped) < obstacle_s - 2.0  # behind it, never through it
    assert not [i for i in infractions if i["type"].startswith("collision")]
    assert len(reported) == 1 and len(timeouts(infractions)) == 1
    elapsed = (reported[0] - sc.status.trigger_tick) * 0.05
    assert timeout < elapsed < timeout + 0.2
    assert not ids_with(env, sc.prefix) and not [v for v in sc.blockers if v in env.backend.vehicle_ids()]
    assert ego_s(env) > obstacle_s + 10.0  # the obstacle is gone after the timeout: the ego drove on


# ------------------------------------------------------------------------- procedural maps
def test_accident_blocks_lane_and_times_out_highway(make_env):
    env, sc = procedural(make_env, "highway", "main_in_1", 550.0, 40.0, "Accident", distance="50",
                         timeout="8")
    w = lane_width_at(env, 90.0)
    parked = AgentKind.PARKED_VEHICLE
    expect = {"police": (90.0, parked, 2.5), "crashed1": (100.0, parked, 2.4),
              "crashed2": (106.0, parked, 2.4)}
    for role, (s_exp, kind, hl) in expect.items():
        k, box, speed, _ = agent(env, f"{sc.prefix}_{role}")
        s, lat = frenet(env.route, box[:2])
        assert k == kind and speed == 0.0 and box[3] == pytest.approx(hl)
        assert s == pytest.approx(s_exp, abs=1.0)
        assert lat == pytest.approx(0.6 * w / 2, abs=0.1)  # pushed towards the right, still in the lane
    k, box, _, _ = agent(env, f"{sc.prefix}_warning")
    _, lat = frenet(env.route, box[:2])
    assert k == AgentKind.STATIC and lat > 2 * w  # at the roadside, right of the outermost lane
    # Hidden SUMO blockers under the three cars: in SUMO, not in the Scene.
    assert len(sc.blockers) == 3
    assert all(b in env.backend.hidden for b in sc.blockers)
    check_blocked_then_timeout(env, sc, 90.0 - 2.5, 8.0)


def test_parked_obstacle_two_ways_flow_moves_against_ego_and_stops_for_it(make_env):
    env, sc = procedural(make_env, "rural", "main_a_0", 450.0, 40.0, "ParkedObstacleTwoWays", distance="60",
                         frequency={"from": "30", "to": "40"})
    k, box, _, _ = agent(env, sc.OBSTACLE)
    s, lat = frenet(env.route, box[:2])
    assert k == AgentKind.PARKED_VEHICLE and s == pytest.approx(100.0, abs=1.0)
    assert lat == pytest.approx(0.7 * lane_width_at(env, 100.0) / 2, abs=0.1)
    flow_ids: set[str] = set()
    started: list[int] = []

    def on_step(env, reward, info):
        fl = ids_with(env, "_flow_")
        if fl and not started:
            started.append(env.scene.tick)
        flow_ids.update(fl)
        for aid in fl:
            _, box, _, vel = agent(env, aid)
            _, lat = frenet(env.route, box[:2])
            assert lat < -2.0  # the opposite lane, left of the ego
            fwd = np.array([math.cos(env.scene.ego.yaw), math.sin(env.scene.ego.yaw)])
            assert vel @ fwd <= 0.01  # against the ego
        return len(flow_ids) >= 3

    run(env, 1200, on_step)
    assert len(flow_ids) >= 3, "the oncoming flow did not run"
    assert "oncoming flow started" in sc.status.notes
    # The flow starts WAIT_S after the ego came within 50 m of the parked car.
    ego_near = (started[0] - sc.status.trigger_tick) * 0.05
    assert ego_near > 5.0
    # Put the ego into the opposite lane in front of an oncoming car: it stops short of the ego.
    ls = env.backend.ls
    vid = max(sc.flow.alive(), key=lambda v: ls.vehicle.getSpeed(v))
    fx, fy = ls.vehicle.getPosition(vid)
    yaw = math.radians(90.0 - ls.vehicle.getAngle(vid))
    ahead = 35.0
    ex, ey = fx + ahead * math.cos(yaw), fy + ahead * math.sin(yaw)
    env.scene.ego = EgoState(ex, ey, yaw + math.pi, 0.0)
    for _ in range(120):
        env.step(np.array([0.0, 1.0, 0.0], np.float32))
    assert vid in sc.flow.alive()
    x, y = ls.vehicle.getPosition(vid)
    assert ls.vehicle.getSpeed(vid) < 0.1  # stopped for the ego ...
    assert 2.0 < math.hypot(x - ex, y - ey) < ahead  # ... in front of it, without reaching it


def test_construction_two_ways_zone_layout_rural(make_env):
    env, sc = procedural(make_env, "rural", "main_a_0", 400.0, 40.0, "ConstructionObstacleTwoWays",
                         distance="60", timeout="15", frequency={"from": "30", "to": "40"})
    zone = 100.0
    w = lane_width_at(env, zone)
    cones = ids_with(env, f"{sc.prefix}_cone")
    assert len(cones) == 7
    rows = []
    for aid in cones:
        k, box, _, _ = agent(env, aid)
        assert k == AgentKind.CONE and box[3] == pytest.approx(0.2)
        rows.append(frenet(env.route, box[:2]))
    rows.sort()
    along = [r for r in rows if r[1] < -0.85 * w / 2 + 0.3]
    assert len(along) >= 4  # the line along the passing (left) side of the lane ...
    assert [round(s - zone) for s, _ in along[:4]] == [2, 4, 6, 8]
    across = sorted(rows, key=lambda r: r[1])[-3:]  # ... and the row across it, 8 m on
    assert all(abs(s - zone - 8.0) < 0.6 for s, _ in across)
    assert max(lat for _, lat in across) > 0.0
    k, box, _, _ = agent(env, f"{sc.prefix}_trafficwarning")
    s, lat = frenet(env.route, box[:2])
    assert k == AgentKind.STATIC and s == pytest.approx(zone - 5.0, abs=0.5) and abs(lat) < 0.3
    assert box[4] > 1.0  # across the lane
    k, box, _, _ = agent(env, f"{sc.prefix}_debris")
    assert k == AgentKind.STATIC and frenet(env.route, box[:2])[0] == pytest.approx(zone + 2.0, abs=0.5)
    check_blocked_then_timeout(env, sc, zone - 5.5, 15.0)


def test_vehicle_opens_door_reaches_into_lane_urban_grid(make_env):
    env, sc = procedural(make_env, "urban_grid", "J0_0toJ0_1_1", 72.0, 5.0, "VehicleOpensDoorTwoWays",
                         distance="40", frequency={"from": "30", "to": "40"})
    w = lane_width_at(env, 45.0)
    car = sc.car_id

    def inner_edge(env) -> float:
        _, box, _, _ = agent(env, car)
        return frenet(env.route, box[:2])[1] - box[4]

    k, box, _, _ = agent(env, car)
    assert k == AgentKind.PARKED_VEHICLE
    assert frenet(env.route, box[:2])[0] == pytest.approx(45.0, abs=1.0)
    assert inner_edge(env) > w / 2  # parked beside the lane, door closed
    opened: list[tuple[float, float]] = []

    def on_step(env, reward, info):
        if sc.door_open_at is not None and not opened:
            ego = env.scene.ego
            d = math.hypot(ego.x - sc.front_xy[0], ego.y - sc.front_xy[1])
            opened.append((d, ego.speed))
        return sc.flow.active

    run(env, 600, on_step)
    assert opened, "the door never opened"
    d, v = opened[0]
    assert d < 10.0 + 0.5 or d / v < 3.0 + 0.1  # 3 s or 10 m before the car
    assert inner_edge(env) < w / 2 - 0.5  # the open door reaches into the ego lane
    _, box, _, _ = agent(env, car)
    assert box[4] == pytest.approx(0.95 + 0.5, abs=0.01)
    assert ego_s(env) < 45.0 - 2.4  # lane_follow stopped behind the door
    assert sc.flow.active  # the oncoming flow starts 5 s after the door opened


def test_invading_turn_vehicles_cut_into_ego_lane_rural(make_env):
    env, sc = procedural(make_env, "rural", "main_a_0", 450.0, 40.0, "InvadingTurn", distance="100",
                         offset="0.25")
    w = lane_width_at(env, 40.0)
    cones = ids_with(env, f"{sc.prefix}_cone")
    assert len(cones) == 10  # every 5 m over distance / 2
    for aid in cones:
        k, box, _, _ = agent(env, aid)
        lat = frenet(env.route, box[:2])[1]
        assert k == AgentKind.CONE and lat == pytest.approx(-(w + 0.8 * w / 2), abs=0.15)  # outer edge
    shift = 0.25 + w / 2 - 0.7
    seen: set[str] = set()
    invasion: list[float] = []
    collisions: list[dict] = []

    def on_step(env, reward, info):
        collisions.extend(i for i in info["infractions"] if i["type"].startswith("collision"))
        for aid in ids_with(env, "_invader_"):
            _, box, _, vel = agent(env, aid)
            _, lat = frenet(env.route, box[:2])
            assert lat == pytest.approx(-w + shift, abs=0.2)  # drawn off their lane centre towards the ego
            fwd = np.array([math.cos(env.scene.ego.yaw), math.sin(env.scene.ego.yaw)])
            assert vel @ fwd < 0.0
            invasion.append(w / 2 - (abs(lat) - box[4]))  # metres of the ego lane the box covers
            seen.add(aid)
        return "ego managed to get through the bend" in sc.status.notes

    run(env, 1500, on_step)
    assert len(seen) >= 3
    assert min(invasion) > 0.2  # every invading box overlaps the ego lane
    assert "ego managed to get through the bend" in sc.status.notes  # lane_follow got through (end reached)
    assert not collisions  # lane-centred driving just clears them
    env.step(np.array([0.5, 0.0, 0.0], np.float32))
    assert not ids_with(env, "_invader_") and not sc.flow.alive()  # the flow is removed at the end


def test_hazard_at_side_lane_bicycles_ride_at_speed_highway(make_env):
    env, sc = procedural(make_env, "highway", "main_in_1", 550.0, 40.0, "HazardAtSideLane", distance="45",
                         bicycle_speed="12", bicycle_drive_distance="40")
    w = lane_width_at(env, 85.0)
    names = [f"{sc.prefix}_bicycle0", f"{sc.prefix}_bicycle1"]
    run(env, 3)  # the hidden SUMO riders are inserted
    starts = []
    for aid, s_exp in zip(names, (85.0, 94.0), strict=True):
        k, box, speed, _ = agent(env, aid)
        s, lat = frenet(env.route, box[:2])
        assert k == AgentKind.BICYCLE and speed == 0.0 and box[3] == pytest.approx(0.9)
        assert s == pytest.approx(s_exp, abs=1.0) and lat == pytest.approx(0.55 * w / 2, abs=0.1)
        starts.append(s)
    speeds: list[float] = []

    def on_step(env, reward, info):
        if sc.status.triggered and ids_with(env, "_bicycle"):
            speeds.append(float(agent(env, names[0])[2]))
        return len(speeds) > 400

    run(env, 1500, on_step)
    assert max(speeds) == pytest.approx(12 / 3.6, abs=0.05)  # bicycle_speed is km/h
    assert speeds[-1] == 0.0  # stopped after bicycle_drive_distance
    for aid, s0 in zip(names, starts, strict=True):
        s, lat = frenet(env.route, agent(env, aid)[1][:2])
        assert s - s0 == pytest.approx(40.0, abs=1.5) and lat == pytest.approx(0.55 * w / 2, abs=0.1)
    assert ego_s(env) < starts[1] + 40.0  # lane_follow stays behind the bicycles


def test_two_ways_types_need_an_opposite_lane(make_env):
    env = make_env(map="highway", traffic=FEW)
    route = lane_route(env.lanes, "main_in_2", 500.0)
    spec = spec_at(env.lanes, route, 40.0, "AccidentTwoWays", distance="50")
    with pytest.raises(ScenarioError, match=r"route test.*AccidentTwoWays.*opposite lane"):
        env.reset(seed=0, options={"route": route, "scenarios": [spec]})
    bad = spec_at(env.lanes, route, 40.0, "ParkedObstacle", direction="up")
    with pytest.raises(ScenarioError, match="direction"):
        env.reset(seed=0, options={"route": route, "scenarios": [bad]})
    unknown = spec_at(env.lanes, route, 40.0, "Accident", colour="red")
    with pytest.raises(ScenarioError, match="unknown parameter 'colour'"):
        env.reset(seed=0, options={"route": route, "scenarios": [unknown]})


@pytest.mark.parametrize(("map_name", "lane_id", "length"), [("highway", "main_in_1", 560.0),
                                                              ("rural", "main_a_0", 700.0)])
def test_candidate_triggers_fit_the_road_and_sampled_instances_set_up(make_env, map_name, lane_id, length):
    load_library()
    env = make_env(map=map_name, traffic={"vehicles": 0, "pedestrians": 0})
    route = lane_route(env.lanes, lane_id, length)
    rng = np.random.default_rng(0)
    for name in OVERTAKING:
        cls = SCENARIOS[name]
        cands = cls.candidate_triggers(route, env.lanes)
        two_way_road = map_name == "rural"
        if name in TWO_WAYS:
            assert (len(cands) > 0) == two_way_road, name
        else:
            assert (len(cands) > 0) == (not two_way_road), name
        if not len(cands):
            continue
        params = cls.sample_params(rng)
        assert set(params) <= set(cls.defaults)
        for s in (cands[0], cands[-1]):
            spec = spec_at(env.lanes, route, float(s), name, **params)
            env.reset(seed=0, options={"route": route, "scenarios": [spec]})
            (sc,) = env.scenarios
            assert sc.status.implemented and sc.trigger_s == pytest.approx(s, abs=0.5)
            assert len(sc.scripted_agents()) > 0 or name.startswith("HazardAtSideLane")


# ------------------------------------------------------------------ Bench2Drive routes
@town(3)
def test_accident_route_24816(make_env):
    env, sc = b2d_env(make_env, 3, "24816", timeout="12")
    w = lane_width_at(env, sc.police_s)
    for role, ds in (("police", 44.0), ("crashed1", 54.0), ("crashed2", 60.0)):
        k, box, _, _ = agent(env, f"{sc.prefix}_{role}")
        s, lat = frenet(env.route, box[:2])
        assert k == AgentKind.PARKED_VEHICLE
        assert s == pytest.approx(sc.trigger_s + ds, abs=1.5) and lat == pytest.approx(0.3 * w, abs=0.15)
    check_blocked_then_timeout(env, sc, sc.police_s - 2.5, 12.0)


@town(4)
def test_construction_route_24785_blocks_lane(make_env):
    env, sc = b2d_env(make_env, 4, "24785")
    k, box, _, _ = agent(env, f"{sc.prefix}_trafficwarning")
    s, lat = frenet(env.route, box[:2])
    assert k == AgentKind.STATIC and s == pytest.approx(sc.trigger_s + 41.0 - 5.0, abs=1.0) and abs(lat) < 0.3
    assert len(ids_with(env, f"{sc.prefix}_cone")) == 7
    assert sc.blockers and sc.blockers[0] in env.backend.hidden
    run(env, 500)
    assert env.scene.ego.speed < 0.05 and ego_s(env) < s - 2.0  # stopped before the zone
    assert any("capped at 53 km/h" in n for n in sc.status.notes)  # SetMaxSpeed(speed) once near


@town(5)
def test_parked_obstacle_route_25318_times_out(make_env):
    env, sc = b2d_env(make_env, 5, "25318", timeout="10")
    k, box, _, _ = agent(env, sc.OBSTACLE)
    s, lat = frenet(env.route, box[:2])
    assert k == AgentKind.PARKED_VEHICLE and s == pytest.approx(sc.trigger_s + 40.0, abs=1.0)
    assert lat == pytest.approx(0.35 * lane_width_at(env, s), abs=0.15)
    check_blocked_then_timeout(env, sc, s - 2.4, 10.0)


@town(4)
def test_hazard_at_side_lane_route_25300(make_env):
    env, sc = b2d_env(make_env, 4, "25300")
    speeds: list[float] = []

    def on_step(env, reward, info):
        bikes = ids_with(env, "_bicycle")
        if len(bikes) == 2:
            for aid in bikes:
                k, _, speed, _ = agent(env, aid)
                assert k == AgentKind.BICYCLE
                if not sc.status.triggered:
                    assert speed == 0.0  # waiting for the trigger
            speeds.append(float(agent(env, bikes[0])[2]))
        return len(speeds) > 300 and sc.status.triggered

    run(env, 900, on_step)
    assert max(speeds) == pytest.approx(12 / 3.6, abs=0.05)
    s0, lat = frenet(env.route, agent(env, f"{sc.prefix}_bicycle0")[1][:2])
    assert lat == pytest.approx(0.275 * lane_width_at(env, s0), abs=0.15)  # 0.55 half lane widths right
    assert ego_s(env) < s0


@town(3)
def test_hazard_at_side_lane_two_ways_route_25854(make_env):
    env, sc = b2d_env(make_env, 3, "25854")
    flow: set[str] = set()

    def on_step(env, reward, info):
        for aid in ids_with(env, "_flow_"):
            _, box, _, vel = agent(env, aid)
            fwd = np.array([math.cos(env.scene.ego.yaw), math.sin(env.scene.ego.yaw)])
            assert frenet(env.route, box[:2])[1] < -2.0 and vel @ fwd <= 0.01
            flow.add(aid)
        return any("spaced 90 m" in n for n in sc.status.notes) and len(flow) >= 1

    run(env, 900, on_step)
    assert flow and sc.flow.flow.gap_range == (90.0, 90.0)  # `frequency` once the ego is near the bicycles
    assert agent(env, f"{sc.prefix}_bicycle0")[2] == pytest.approx(10 / 3.6, abs=0.05)


@town(5)
def test_accident_two_ways_route_25857_flow(make_env):
    env, sc = b2d_env(make_env, 5, "25857")
    assert sc.interval_param("frequency") == (62.0, 109.0)
    run(env, 900)
    alive = sc.flow.alive()
    assert alive and "oncoming flow started" in sc.status.notes
    gaps = np.diff(sorted(env.backend.ls.vehicle.getLanePosition(v) for v in alive))
    assert all(g > 62.0 - 5.0 for g in gaps)  # spaced by `frequency` (from..to) metres
    assert env.scene.ego.speed < 0.05 and ego_s(env) < sc.police_s - 2.5  # lane_follow waits behind
