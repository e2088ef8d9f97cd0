"""Tests for envs.driving_env.DrivingEnv on the embedded SUMO backend (libsumo).

libsumo runs ONE simulation per process: every environment made here is closed by the `make_env`
fixture, and a test only steps the environment it reset last.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from helpers import (
    B2D,
    NO_CAMERA,
    SMALL_TRAFFIC,
    TOWN04,
    drive,
    ego_s,
    route_projection,
    shared_data,
    straight_route,
)

import envs  # noqa: F401  (registers the gymnasium ids)
from envs.driving_env import DrivingEnv
from envs.maps.build import MapError
from envs.route_graph import Piece, build_route, route_graph
from envs.routes import RouteFileError, ScenarioSpec, parse_routes
from envs.scenarios.base import ScenarioError
from envs.scene import AgentKind, Route
from envs.sumo_backend import SimulatorError
from policies.base import make_agent


# ------------------------------------------------------------------------------ gymnasium API
@pytest.mark.parametrize(
    "sensors",
    [
        pytest.param({}, id="camera"),
        pytest.param({"camera": NO_CAMERA, "bev": {"enabled": True, "size": 96}}, id="bev-only"),
    ],
)
def test_check_env(make_env, sensors):
    env = make_env(**{"camera": {"enabled": True}, **sensors})
    assert ("image" in env.observation_space.spaces) == ("camera" not in sensors)
    assert ("bev" in env.observation_space.spaces) == ("bev" in sensors)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    # The only acceptable complaint: no spec (made directly, not through gymnasium.make).
    msgs = [str(w.message) for w in caught if "render modes" not in str(w.message)]
    assert not msgs, msgs
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    if "bev" in sensors:
        assert obs["bev"].shape == (96, 96, 3) and obs["bev"].any()
    else:
        assert obs["image"].shape == (128, 256, 3) and obs["image"].any()


def test_gymnasium_make_with_kwargs():
    env = gym.make("takeover/UrbanGrid-v0", traffic=SMALL_TRAFFIC, camera={"width": 64, "height": 32},
                   max_ticks=300, render_mode="rgb_array")
    try:
        assert env.spec.id == "takeover/UrbanGrid-v0"
        cfg = env.unwrapped.config
        assert cfg.map == "urban_grid" and cfg.traffic.vehicles == 5 and cfg.max_ticks == 300
        assert env.observation_space["image"].shape == (32, 64, 3)
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        assert info["status"] == "Running" and info["tick"] == 0
        for _ in range(5):
            obs, reward, terminated, truncated, info = env.step(np.array([0.5, 0.0, 0.0], np.float32))
            assert env.observation_space.contains(obs) and np.isfinite(reward)
        assert info["tick"] == 5 and not (terminated or truncated)
        frame = env.render()
        assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
    finally:
        env.close()


@pytest.mark.parametrize("env_id", ["takeover/Highway-v0", "takeover/Rural-v0"])
def test_other_registered_maps(env_id):
    env = gym.make(env_id, traffic={"vehicles": 3, "pedestrians": 0}, camera=NO_CAMERA)
    try:
        obs, _ = env.reset(seed=0)
        for _ in range(10):
            obs, *_ = env.step(np.array([0.4, 0.0, 0.0], np.float32))
        assert env.observation_space.contains(obs) and obs["speed"][0] > 0.5
    finally:
        env.close()


def test_gymnasium_make_unknown_key():
    with pytest.raises(ValueError, match="bogus"):
        gym.make("takeover/UrbanGrid-v0", bogus=1)


# ------------------------------------------------------------------------------ determinism
def _rollout(env: DrivingEnv, seed: int, actions: np.ndarray) -> dict:
    obs, info = env.reset(seed=seed)
    frames = [(obs["speed"].tobytes(), obs["target_points"].tobytes(), obs["image"].tobytes(),
               obs["command"])]
    poses, traffic = [], []
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        frames.append((obs["speed"].tobytes(), obs["target_points"].tobytes(), obs["image"].tobytes(),
                       obs["command"], reward))
        e = env.scene.ego
        poses.append((e.x, e.y, e.yaw, e.speed))
        traffic.append((tuple(env.scene.agents.ids), env.scene.agents.box.round(6).tobytes()))
        assert not (terminated or truncated)
    return {"route": info["route_id"], "route_points": env.route.points.copy(), "frames": frames,
            "poses": poses, "traffic": traffic}


def test_determinism(make_env):
    rng = np.random.default_rng(0)
    n = 100
    actions = np.column_stack([rng.uniform(0.3, 0.8, n), np.zeros(n), rng.uniform(-0.1, 0.1, n)])
    actions = actions.astype(np.float32)
    cfg = {"camera": {"width": 128, "height": 64}}
    env = make_env(**cfg)
    a = _rollout(env, 7, actions)
    b = _rollout(env, 7, actions)
    assert a["route"] == b["route"]
    assert np.array_equal(a["route_points"], b["route_points"])
    assert a["frames"] == b["frames"]  # speed, target points, image bytes, command, reward
    assert a["poses"] == b["poses"]
    assert a["traffic"] == b["traffic"]
    assert any(len(ids) for ids, _ in a["traffic"])  # there was traffic to compare
    # Another seed: another route or other traffic.
    c = _rollout(env, 8, actions)
    assert c["route"] != a["route"] or c["traffic"] != a["traffic"]
    # A fresh environment (same process, the first one closed) reproduces the episode too.
    env.close()
    d = _rollout(make_env(**cfg), 7, actions)
    assert d["frames"] == a["frames"] and d["poses"] == a["poses"]


# ------------------------------------------------------------------------------ errors
def test_unknown_map(make_env):
    with pytest.raises(MapError) as exc:
        make_env(map="no_such_town")
    for name in ("urban_grid", "highway", "rural"):
        assert name in str(exc.value)


def test_malformed_route_file(make_env, tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text('<routes><route id="1" town="Town04"><waypoints><position x="1" y="2"')
    with pytest.raises(RouteFileError, match="malformed"):
        make_env(routes=str(bad))
    nonnum = tmp_path / "nonnum.xml"
    nonnum.write_text('<routes><route id="1"><waypoints><position x="a" y="2" z="0"/>'
                      '<position x="3" y="4" z="0"/></waypoints></route></routes>')
    with pytest.raises(RouteFileError, match="non-numeric"):
        make_env(routes=str(nonnum))
    with pytest.raises(RouteFileError, match="not found"):
        make_env(routes=str(tmp_path / "missing.xml"))


def test_unknown_route_id(make_env, tmp_path):
    routes = tmp_path / "routes.xml"
    routes.write_text('<routes><route id="r1" town="X"><waypoints><position x="0" y="0" z="0"/>'
                      '<position x="10" y="0" z="0"/></waypoints></route></routes>')
    with pytest.raises(RouteFileError, match=r"unknown route id\(s\) nope.*available: r1"):
        make_env(routes=str(routes), route_ids=["nope"])
    env = make_env(routes=str(routes))
    with pytest.raises(RouteFileError, match="nope"):
        env.reset(seed=0, options={"route_id": "nope"})


def test_unknown_config_key(make_env):
    with pytest.raises(ValueError, match="bogus"):
        make_env(bogus=1)
    with pytest.raises(ValueError, match="bogus"):
        make_env(camera={"enabled": False, "bogus": 1})
    with pytest.raises(ValueError, match="bogus"):
        make_env(traffic={"vehicles": 1, "bogus": 1})


def test_step_before_reset(make_env):
    env = make_env()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


def test_scenario_unknown_parameter_via_options(make_env):
    env = make_env()
    env.reset(seed=0)
    route = env.route
    tp = env.lanes.world_to_carla(route.points[50])
    spec = ScenarioSpec("HardBreakRoute_x", "HardBreakRoute", (float(tp[0]), float(tp[1]), 0.0, 0.0),
                        {"bogus_param": {"value": "1"}})
    with pytest.raises(ScenarioError, match="bogus_param") as exc:
        env.reset(seed=0, options={"route": route, "scenarios": [spec]})
    assert "lead_distance" in str(exc.value)  # names the parameters that are known


def _write_route_xml(path: Path, route_id: str, waypoints: np.ndarray, scenario_xml: str) -> Path:
    pos = "\n".join(f'        <position x="{x:.2f}" y="{y:.2f}" z="0.0"/>' for x, y in waypoints)
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<routes>\n'
        f'  <route id="{route_id}" town="Town04">\n    <waypoints>\n{pos}\n    </waypoints>\n'
        f'    <scenarios>\n{scenario_xml}\n    </scenarios>\n  </route>\n</routes>\n'
    )
    return path


def _b2d_route(route_id: str):
    return next(s for s in parse_routes(B2D) if s.route_id == route_id)


def _route_26406_with(tmp_path, route_id: str, scenario_type: str, params_xml: str):
    """Bench2Drive route 26406 (Town04) with one scenario of `scenario_type` at its trigger point."""
    spec = _b2d_route("26406")
    x, y, _, yaw = spec.scenarios[0].trigger_point
    return _write_route_xml(tmp_path / f"{route_id}.xml", route_id, spec.waypoints, (
        f'      <scenario name="{scenario_type}_1" type="{scenario_type}">\n'
        f'        <trigger_point x="{x}" y="{y}" z="0.0" yaw="{yaw}"/>\n'
        f'        {params_xml}\n'
        f'      </scenario>'))


@shared_data
def test_scenario_unknown_parameter_in_route_file(make_env, tmp_path):
    xml = _route_26406_with(tmp_path, "bad1", "HardBreakRoute", '<brake_strength value="11"/>')
    env = make_env(map=str(TOWN04), routes=str(xml))
    with pytest.raises(ScenarioError, match="brake_strength") as exc:
        env.reset(seed=0)
    assert "bad1" in str(exc.value) and "HardBreakRoute" in str(exc.value)


# ------------------------------------------------------------------------------ SUMO failures
def test_sumo_crash_recovery(make_env):
    env = make_env()
    env.reset(seed=0)
    for _ in range(5):
        env.step(np.array([0.5, 0.0, 0.0], np.float32))
    env.backend.ls.close()  # SUMO dies behind the environment's back
    with pytest.raises(SimulatorError, match="SUMO failed"):
        env.step(np.array([0.5, 0.0, 0.0], np.float32))
    with pytest.raises(RuntimeError, match="reset"):  # the episode is over until reset
        env.step(np.array([0.5, 0.0, 0.0], np.float32))
    obs, info = env.reset(seed=1)
    assert info["tick"] == 0 and env.backend.running
    for _ in range(20):
        obs, _, _, _, info = env.step(np.array([0.5, 0.0, 0.0], np.float32))
    assert info["tick"] == 20 and obs["speed"][0] > 0.5 and env.observation_space.contains(obs)


def test_second_env_takes_libsumo_over(make_env):
    first = make_env()
    first.reset(seed=0)
    second = make_env()
    second.reset(seed=1)
    with pytest.raises(SimulatorError, match="one simulation per process"):
        first.step(np.array([0.5, 0.0, 0.0], np.float32))
    second.step(np.array([0.5, 0.0, 0.0], np.float32))  # the new owner is unaffected
    first.reset(seed=0)  # and the first one can take it back
    first.step(np.array([0.5, 0.0, 0.0], np.float32))
    with pytest.raises(SimulatorError):
        second.step(np.array([0.5, 0.0, 0.0], np.float32))


# ------------------------------------------------------------------------------ episodes
def test_constant_throttle_leaves_curvy_route(make_env):
    env = make_env(map="rural")
    env.reset(seed=0)
    terminated, truncated, info, infractions = drive(env, make_agent("constant", throttle=0.6), 4000)
    assert terminated and not truncated
    assert info["status"].startswith("Failed")
    assert info["completion"] < 99.0
    types = {i["type"] for i in infractions}
    assert types & {"route_dev", "collision_vehicle", "collision_static", "collision_pedestrian"}
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


def test_lane_follow_completes_short_route(make_env):
    env = make_env(random_route_length=(60.0, 100.0))
    env.reset(seed=3)
    terminated, truncated, info, _ = drive(env, make_agent("lane_follow"), 3000)
    assert terminated and not truncated
    assert info["status"] == "Completed" and info["completion"] >= 99.0
    rec = env.record()
    assert rec["status"] == "Completed" and rec["scores"]["score_route"] == 100.0


def test_max_ticks_truncates(make_env):
    env = make_env(max_ticks=50)
    env.reset(seed=0)
    for k in range(1, 51):
        _, _, terminated, truncated, info = env.step(np.array([0.0, 1.0, 0.0], np.float32))
        if k < 50:
            assert not (terminated or truncated)
    assert truncated and not terminated
    assert info["status"] == "Failed - Agent timed out" and info["tick"] == 50
    assert "route_timeout" in {i["type"] for i in info["infractions"]}
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


# ------------------------------------------------------------------------------ collisions
def test_collision_with_parked_obstacle(make_env):
    env = make_env(map="highway", traffic={"vehicles": 0, "pedestrians": 0})
    route = straight_route(env.lanes, 200.0)
    tp = env.lanes.world_to_carla(route.points[10 * Route.POINTS_PER_METER])  # trigger 10 m in
    obstacle = ScenarioSpec("ParkedObstacle_t", "ParkedObstacle", (float(tp[0]), float(tp[1]), 0.0, 0.0),
                            {"distance": {"value": "40"}})
    env.reset(seed=0, options={"route": route, "scenarios": [obstacle]})
    assert [sc.type_name for sc in env.scenarios] == ["ParkedObstacle"]
    env.step(np.zeros(3, np.float32))  # SUMO inserts the parked vehicle on the next simulation step
    agents = env.scene.agents
    (sc,) = env.scenarios
    k = agents.index(sc.OBSTACLE)
    assert agents.kind[k] == AgentKind.PARKED_VEHICLE
    lateral, s = route_projection(route, agents.box[k, :2])
    # Bench2Drive parks it 0.7 half lane widths towards the kerb: it still overlaps the lane-centred ego.
    assert 0.9 < lateral < 1.6 and s == pytest.approx(50.0, abs=3.0)

    hits: list[tuple[float, dict]] = []

    def on_step(env, reward, info):
        hits.extend((reward, i) for i in info["infractions"] if i["type"] == "collision_vehicle")
        return bool(hits)

    drive(env, make_agent("constant", throttle=0.7), 600, on_step=on_step)
    assert hits, "the ego drove through the parked obstacle without a collision_vehicle infraction"
    reward, inf = hits[0]
    assert inf["other_id"] == sc.OBSTACLE
    assert reward < 0  # the collision penalty outweighs the progress of one tick
    assert env.record()["infractions"]["collisions_vehicle"]


# ------------------------------------------------------------------------------ scenarios (Town04)
@pytest.fixture
def town04_env(make_env):
    return make_env(map=str(TOWN04), routes=str(B2D), route_ids=["26406", "27529"])


@shared_data
def test_hard_break_route_lead_brakes(town04_env):
    env = town04_env
    env.reset(seed=0, options={"route_id": "26406"})
    (sc,) = env.scenarios
    assert sc.type_name == "HardBreakRoute"
    lead = sc.LEAD
    ls = env.backend.ls
    speeds: list[float] = []
    trigger_step: list[int] = []

    def on_step(env, reward, info):
        if sc.status.triggered:
            if not trigger_step:
                trigger_step.append(info["tick"])
            speeds.append(ls.vehicle.getSpeed(lead))
            return len(speeds) >= 80
        return False

    drive(env, make_agent("lane_follow"), 400, on_step=on_step)
    assert trigger_step, "the ego never reached the HardBreakRoute trigger"
    assert lead in env.backend.vehicle_ids()
    assert speeds[0] > 3.0  # the lead was moving at the trigger
    stop = next((k for k, v in enumerate(speeds) if v < 0.1), None)
    assert stop is not None and stop * 0.05 <= 3.0, speeds
    assert max(speeds[stop:]) < 0.1  # and stays stopped (stop_duration 6 s)
    # The lead is on the route, ahead of the ego.
    lateral, s = route_projection(env.route, np.array(ls.vehicle.getPosition(lead)))
    assert lateral < 1.0 and s > ego_s(env)


@shared_data
def test_pedestrian_crossing_enters_lane(town04_env):
    env = town04_env
    env.reset(seed=0, options={"route_id": "27529"})
    (sc,) = env.scenarios
    assert sc.type_name == "PedestrianCrossing"
    in_lane: list[tuple[int, float]] = []

    def walkers(env):
        ag = env.scene.agents
        return [k for k, a in enumerate(ag.ids) if a.startswith("sc_walker")]

    def on_step(env, reward, info):
        ag = env.scene.agents
        ks = walkers(env)
        assert ks and all(ag.kind[k] == AgentKind.PEDESTRIAN for k in ks)
        for k in ks:
            lateral, s = route_projection(env.route, ag.box[k, :2])
            if lateral < 1.5 and s > ego_s(env):
                assert sc.status.triggered, "a walker entered the lane before the trigger"
                in_lane.append((info["tick"], lateral))
        return bool(in_lane)

    drive(env, make_agent("lane_follow"), 400, on_step=on_step)
    assert sc.status.triggered and in_lane
    tick, _ = in_lane[0]
    assert (tick - sc.status.trigger_tick) * 0.05 < 10.0


@shared_data
def test_parked_obstacle_on_route(make_env, tmp_path):
    xml = _route_26406_with(tmp_path, "parked1", "ParkedObstacle",
                            '<distance value="40"/><direction value="right"/><speed value="40"/>')
    env = make_env(map=str(TOWN04), routes=str(xml))
    env.reset(seed=0)
    (sc,) = env.scenarios
    assert sc.type_name == "ParkedObstacle"
    for _ in range(20):
        env.step(np.array([0.3, 0.0, 0.0], np.float32))
    agents = env.scene.agents
    k = agents.index(sc.OBSTACLE)
    assert agents.kind[k] == AgentKind.PARKED_VEHICLE and agents.speed[k] == 0.0
    lateral, s = route_projection(env.route, agents.box[k, :2])
    assert 0.9 < lateral < 1.6  # towards the kerb, as Bench2Drive places it
    assert s == pytest.approx(sc.trigger_s + 40.0, abs=5.0)
    assert s > ego_s(env) + 20.0


# ------------------------------------------------------------------------------ ego straddling lanes
def _straddle_run(make_env, offset: float) -> tuple[DrivingEnv, str, list[dict], float]:
    """A standing ego `offset` m from its lane centre towards the neighbour lane, where a car comes
    from 55 m behind at 12 m/s. Returns the env, the neighbour lane's id, the infractions and the
    ego's position along its lane."""
    env = make_env(map="highway", traffic={"vehicles": 0, "pedestrians": 0})
    own = int(straight_route(env.lanes, 200.0).lane[0])
    route = build_route(route_graph(env.lanes), [Piece(own, 60.0, 200.0)], "straight")
    env.reset(seed=0, options={"route": route})
    lanes = env.lanes
    other = int(lanes.left[own]) if lanes.left[own] >= 0 else int(lanes.right[own])
    assert other >= 0, "the highway's straight lane has no neighbour"
    x, y, yaw = lanes.position_on_lane(own, 60.0)
    ox, oy, _ = lanes.position_on_lane(other, 60.0)
    toward = np.array([ox - x, oy - y]) / math.hypot(ox - x, oy - y)
    x, y = x + offset * toward[0], y + offset * toward[1]
    env.scene.ego = dataclasses.replace(env.scene.ego, x=x, y=y, yaw=yaw, speed=0.0)
    env.backend.add_vehicle("car", [lanes.edge_of_lane[other]], int(lanes.lane_index[other]), 5.0, 12.0)
    env.backend.ls.vehicle.setLaneChangeMode("car", 0)  # it would overtake the shadow on a third lane
    infractions: list[dict] = []
    for _ in range(300):
        _, _, terminated, truncated, info = env.step(np.array([0.0, 1.0, 0.0], np.float32))
        infractions += info["infractions"]
        assert not (terminated or truncated), info
    return env, lanes.lane_ids[other], infractions, 60.0


def test_background_car_stops_behind_a_straddling_ego(make_env):
    """SUMO maps the ego onto one lane; the hidden shadow on the other lane it reaches into makes the
    drivers there brake for it (without it the car drives through the ego)."""
    env, other, infractions, ego_pos = _straddle_run(make_env, offset=1.8)
    ls = env.backend.ls
    assert not [i for i in infractions if i["type"].startswith("collision")]
    assert ls.vehicle.getSpeed("car") < 0.1
    assert ls.vehicle.getLanePosition("car") < ego_pos - env.scene.ego.half_length  # behind the ego's rear
    assert [ls.vehicle.getLaneID(v) for v in env.backend.shadows.values()] == [other]
    assert not [v for v in env.scene.agents.ids if v.startswith("ego_shadow")]  # not in the Scene


def test_no_shadow_for_an_ego_inside_its_lane(make_env):
    env, _other, infractions, ego_pos = _straddle_run(make_env, offset=0.3)
    ls = env.backend.ls
    assert env.backend.shadows == {}
    assert ls.vehicle.getLanePosition("car") > ego_pos + 20.0  # drove past at speed
    assert not [i for i in infractions if i["type"].startswith("collision")]


def test_oncoming_car_stops_for_an_ego_across_the_centre_line(make_env):
    """The two-way case (overtaking an obstacle through the opposite lane): the shadow stands on the
    oncoming lane, whose drivers stop in front of the ego instead of driving through it."""
    env = make_env(map="rural", traffic={"vehicles": 0, "pedestrians": 0})
    lanes = env.lanes
    own = lanes.lane("main_a_0")
    route = build_route(route_graph(lanes), [Piece(own, 100.0, 250.0)], "two_way")
    env.reset(seed=0, options={"route": route})
    x, y, yaw = lanes.position_on_lane(own, 100.0)
    ((opp, dist, opp_s, _),) = [r for r in lanes.nearest_lanes(x, y, radius=6.0) if r[0] != own]
    assert lanes.edge_of_lane[opp] == "-main_a"
    ox, oy, _ = lanes.position_on_lane(opp, opp_s)
    shift = 0.5 * dist  # on the centre line: half the ego in the oncoming lane
    env.scene.ego = dataclasses.replace(env.scene.ego, x=x + shift * (ox - x) / dist,
                                        y=y + shift * (oy - y) / dist, yaw=yaw, speed=0.0)
    env.backend.add_vehicle("oncoming", ["-main_a"], 0, opp_s - 70.0, 12.0)
    env.backend.ls.vehicle.setLaneChangeMode("oncoming", 0)
    infractions: list[dict] = []
    for _ in range(300):
        _, _, terminated, truncated, info = env.step(np.array([0.0, 1.0, 0.0], np.float32))
        infractions += info["infractions"]
        assert not (terminated or truncated), info
    ls = env.backend.ls
    assert not [i for i in infractions if i["type"].startswith("collision")]
    assert ls.vehicle.getSpeed("oncoming") < 0.1
    assert ls.vehicle.getLanePosition("oncoming") < opp_s - env.scene.ego.half_length
    assert [ls.vehicle.getLaneID(v) for v in env.backend.shadows.values()] == [lanes.lane_ids[opp]]
