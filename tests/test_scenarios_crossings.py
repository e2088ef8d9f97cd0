"""Walkers, cyclists and control loss: DynamicObjectCrossing, ParkingCrossingPedestrian, PedestrianCrossing,
VehicleTurningRoute, VehicleTurningRoutePedestrian, CrossingBicycleFlow, ControlLoss.

Shared-data tests drive the Bench2Drive routes that carry these types (skipped without ../shared/data);
procedural tests build routes on the urban grid and place the scenarios with ScenarioSpecs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import B2D, NO_CAMERA, SHARED_DATA, drive, ego_s, route_projection

from envs.route_graph import build_route, route_graph
from envs.routes import ScenarioSpec
from envs.scenarios.base import SCENARIOS, ScenarioError, load_library
from envs.scenarios.crossings import (
    ControlLoss,
    CrossingBicycleFlow,
    DynamicObjectCrossing,
    ParkingCrossingPedestrian,
    PedestrianCrossing,
    VehicleTurningRoute,
    VehicleTurningRoutePedestrian,
)
from envs.scenarios.placement import junction_passes
from envs.scene import AgentKind, LightState
from policies.base import make_agent

MAPS = SHARED_DATA / "carla" / "maps"
NO_TRAFFIC = {"vehicles": 0, "pedestrians": 0}
DT = 0.05
TYPES = (DynamicObjectCrossing, ParkingCrossingPedestrian, PedestrianCrossing, VehicleTurningRoute,
         VehicleTurningRoutePedestrian, CrossingBicycleFlow, ControlLoss)


def town(name: str) -> list:
    """Marks for a case that needs ../shared/data/carla/maps/<name>.xodr and the Bench2Drive route file
    (skipped when absent)."""
    present = B2D.is_file() and (MAPS / f"{name}.xodr").is_file()
    why = f"../shared/data ({name}, Bench2Drive routes) not present"
    return [pytest.mark.shared_data, pytest.mark.skipif(not present, reason=why)]


def b2d_case(town_name: str, *rest):
    return pytest.param(town_name, *rest, marks=town(town_name))


def b2d_env(make_env, town_name: str, route_id: str, traffic=NO_TRAFFIC):
    env = make_env(map=str(MAPS / f"{town_name}.xodr"), routes=str(B2D), route_ids=[route_id],
                   traffic=traffic, camera=NO_CAMERA)
    env.reset(seed=0, options={"route_id": route_id})
    return env


def grid_route(env, first_edge: str, last_edge: str, last_s: float = 60.0):
    """A route on the urban grid from the start of `first_edge` to `last_s` m along `last_edge`."""
    lanes = env.lanes
    graph = route_graph(lanes)
    res = graph.search((lanes.lane(f"{first_edge}_1"), 0.0), [(lanes.lane(f"{last_edge}_1"), last_s)])[0]
    assert res is not None, f"no path {first_edge} -> {last_edge}"
    return build_route(graph, res[1], f"grid-{first_edge}-{last_edge}")


def spec_at(env, route, s: float, type_name: str, **params: str) -> ScenarioSpec:
    idx = int(np.searchsorted(route.cum_length, s))
    tp = env.lanes.world_to_carla(route.points[idx])
    return ScenarioSpec(f"{type_name}_t", type_name, (float(tp[0]), float(tp[1]), 0.0, 0.0),
                        {k: {"value": v} for k, v in params.items()})


def grid_env(make_env, first_edge: str, last_edge: str, type_name: str, trigger_s: float, traffic=NO_TRAFFIC,
             **params: str):
    env = make_env(map="urban_grid", traffic=traffic)
    route = grid_route(env, first_edge, last_edge)
    spec = spec_at(env, route, trigger_s, type_name, **params)
    env.reset(seed=0, options={"route": route, "scenarios": [spec]})
    (sc,) = env.scenarios
    assert sc.type_name == type_name
    return env, sc


def lateral_offset(route, xy: np.ndarray) -> tuple[float, float]:
    """(signed lateral offset, positive left, of xy from the nearest route point; that point's s)."""
    d = np.hypot(route.points[:, 0] - xy[0], route.points[:, 1] - xy[1])
    k = int(np.argmin(d))
    yaw = route.yaw[k]
    rel = xy - route.points[k]
    return float(-rel[0] * math.sin(yaw) + rel[1] * math.cos(yaw)), float(route.cum_length[k])


def in_box(box: np.ndarray, pts: np.ndarray) -> np.ndarray:
    x, y, yaw, hl, hw = box
    rel = pts - np.array([x, y])
    c, s = math.cos(yaw), math.sin(yaw)
    along = rel[:, 0] * c + rel[:, 1] * s
    across = -rel[:, 0] * s + rel[:, 1] * c
    return (np.abs(along) <= hl) & (np.abs(across) <= hw)


def hidden_behind(box: np.ndarray, eye: np.ndarray, target: np.ndarray) -> bool:
    """Whether the sight line eye -> target passes through the box."""
    t = np.linspace(0.0, 1.0, 400)[:, None]
    return bool(in_box(box, eye + t * (target - eye))[:-5].any())


def watch_crossers(env, sc, prefix: str, kind: int):
    """on_step callback recording the first tick a scripted crosser (`prefix`) is in the ego lane ahead."""
    rec: dict = {"in_lane": None, "seen": 0}

    def on_step(env, reward, info):
        ag = env.scene.agents
        for k, aid in enumerate(ag.ids):
            if not aid.startswith(prefix):
                continue
            rec["seen"] += 1
            assert ag.kind[k] == kind
            lat, s = route_projection(env.route, ag.box[k, :2])
            if lat < 1.5 and s > ego_s(env) and rec["in_lane"] is None:
                assert sc.status.triggered, f"{aid} entered the ego lane before the trigger"
                assert sc.started, f"{aid} entered the ego lane before it started crossing"
                rec["in_lane"] = (info["tick"], aid, s - ego_s(env))
        return False

    return rec, on_step


def reacted_or_collided(env, infractions: list[dict], kind: str, actor_prefix: str) -> bool:
    """lane_follow either hit the actor (collision counted) or was braking/stopped while it crossed."""
    hit = [i for i in infractions
           if i["type"] == kind and str(i.get("other_id", "")).startswith(actor_prefix)]
    return bool(hit) and env.record()["infractions"][
        {"collision_pedestrian": "collisions_pedestrian", "collision_vehicle": "collisions_vehicle"}[kind]]


def drive_until_crossed(env, sc, prefix: str, kind: int, steps: int = 700):
    rec, watch = watch_crossers(env, sc, prefix, kind)
    speeds: list[float] = []

    def on_step(env, reward, info):
        watch(env, reward, info)
        if sc.started:
            speeds.append(env.scene.ego.speed)
        return rec["in_lane"] is not None and len(speeds) > 200

    _, _, _, infractions = drive(env, make_agent("lane_follow"), steps, on_step)
    return rec, speeds, infractions


def assert_reaction(env, infractions, speeds, kind: str, prefix: str) -> None:
    collided = reacted_or_collided(env, infractions, kind, prefix)
    braked = bool(speeds) and min(speeds) < 0.5 * max(speeds[0], 1e-3)
    assert collided or braked, "lane_follow neither reacted to the crossing actor nor collided with it"


# ---------------------------------------------------------------------------------- shared data
@pytest.mark.parametrize(("town_name", "route_id"),
                         [b2d_case("Town01", "24211"), b2d_case("Town02", "24224")])
def test_dynamic_object_crossing_b2d(make_env, town_name, route_id):
    env = b2d_env(make_env, town_name, route_id, traffic={"vehicles": 3, "pedestrians": 0})
    (sc,) = env.scenarios
    assert sc.type_name == "DynamicObjectCrossing"
    assert sc.collision_s == pytest.approx(sc.trigger_s + sc.float_param("distance"), abs=3.0)
    ag = env.scene.agents
    blocker = ag.box[ag.index(sc.blocker_id)]
    assert ag.kind[ag.index(sc.blocker_id)] == AgentKind.STATIC  # advertisement / container
    walker0 = ag.box[ag.index(sc.walker_id), :2].copy()
    # Blocker and walker stand off the road on the right, beside the crossing point.
    lat_b, s_b = lateral_offset(env.route, blocker[:2])
    lat_w, s_w = lateral_offset(env.route, walker0)
    assert lat_b < -(sc.side.edge + 0.3) and lat_w < -(sc.side.edge + 0.3)
    assert s_b == pytest.approx(sc.collision_s, abs=1.0) and s_w > s_b
    start_eye: list[np.ndarray] = []
    speeds: list[float] = []
    rec, watch = watch_crossers(env, sc, "sc_walker", AgentKind.PEDESTRIAN)

    def on_step(env, reward, info):
        watch(env, reward, info)
        if sc.started:
            speeds.append(env.scene.ego.speed)
        if sc.started and not start_eye:
            e = env.scene.ego
            start_eye.append(np.array([e.x, e.y]))
            d = math.hypot(e.x - sc.collision_xy[0], e.y - sc.collision_xy[1])
            # scenario-runner's start: time to arrival below the reaction time (2.1 s + 0.1 per 5 degrees)
            assert d < 6.0 or d / max(e.speed, 1e-6) < sc.reaction_time + 2 * DT
            assert d > 4.0  # ... but before the ego is there
        return rec["in_lane"] is not None and info["tick"] > rec["in_lane"][0] + 60

    _, _, _, infractions = drive(env, make_agent("lane_follow"), 700, on_step)
    assert rec["in_lane"] is not None, "the walker never entered the ego lane"
    tick, _, ahead = rec["in_lane"]
    assert tick > sc.started_tick >= sc.status.trigger_tick and ahead > 0
    # From where the ego was when the walker started, the blocker hid it.
    assert hidden_behind(blocker, start_eye[0], walker0)
    assert_reaction(env, infractions, speeds, "collision_pedestrian", "sc_walker")


@pytest.mark.parametrize(("town_name", "route_id", "sumo_parked"),
                         [b2d_case("Town03", "24206", True), b2d_case("Town02", "24294", False)])
def test_parking_crossing_pedestrian_b2d(make_env, town_name, route_id, sumo_parked):
    env = b2d_env(make_env, town_name, route_id)
    (sc,) = env.scenarios
    assert sc.type_name == "ParkingCrossingPedestrian"
    assert sc.parked_sumo is sumo_parked
    env.step(np.zeros(3))  # SUMO inserts a parked vehicle on the next step
    ag = env.scene.agents
    k = ag.index(sc.parked_id)
    assert ag.kind[k] == AgentKind.PARKED_VEHICLE and ag.speed[k] == 0.0
    assert (sc.parked_id in env.backend.vehicle_ids()) is sumo_parked
    car = ag.box[k].copy()
    walker0 = ag.box[ag.index(sc.walker_id), :2].copy()
    lat_c, s_c = lateral_offset(env.route, car[:2])
    lane_half = 0.5 * env.lanes.width[env.route.lane[int(np.searchsorted(env.route.cum_length, s_c))]]
    assert lat_c < -(lane_half + 0.5)  # beside the ego lane, on the right
    assert s_c == pytest.approx(sc.trigger_s + sc.float_param("distance"), abs=3.0)
    eye = env.route.points[int(np.searchsorted(env.route.cum_length, s_c - 25.0))]
    assert hidden_behind(car, eye, walker0)
    rec, speeds, infractions = drive_until_crossed(env, sc, "sc_walker", AgentKind.PEDESTRIAN)
    assert rec["in_lane"] is not None and rec["in_lane"][0] > sc.started_tick >= sc.status.trigger_tick
    assert_reaction(env, infractions, speeds, "collision_pedestrian", "sc_walker")


@pytest.mark.parametrize(("town_name", "route_id"),
                         [b2d_case("Town03", "27515"), b2d_case("Town04", "27529")])
def test_pedestrian_crossing_b2d(make_env, town_name, route_id):
    env = b2d_env(make_env, town_name, route_id)
    (sc,) = env.scenarios
    assert sc.type_name == "PedestrianCrossing"
    assert len(sc.crossers) == 3
    # The walkers wait on the right sidewalk just before the junction the route enters next.
    assert sc.junction.entry_s - 3.0 < sc.collision_s <= sc.junction.entry_s
    for c in sc.crossers:
        lat, s = lateral_offset(env.route, sc.actors.position(c.actor_id))
        assert lat < -(sc.side.edge + 0.3) and abs(s - sc.collision_s) < 3.0
    crossed: dict[str, int] = {}

    def on_step(env, reward, info):
        ag = env.scene.agents
        for k, aid in enumerate(ag.ids):
            if aid.startswith("sc_walker"):
                assert ag.kind[k] == AgentKind.PEDESTRIAN
                lat, s = route_projection(env.route, ag.box[k, :2])
                if lat < 1.5 and s > ego_s(env):
                    assert sc.status.triggered and sc.started
                    crossed.setdefault(aid, info["tick"])
        return len(crossed) == 3

    drive(env, make_agent("lane_follow"), 600, on_step)
    assert len(crossed) == 3, f"only {sorted(crossed)} crossed the ego lane"
    assert min(crossed.values()) > sc.started_tick
    assert sc.started_tick >= sc.status.trigger_tick


def control_loss_drive(env, scenarios, steps: int = 420) -> np.ndarray:
    route_id = env.route.route_id
    options = {"route_id": route_id} if scenarios is None else {"route_id": route_id, "scenarios": scenarios}
    env.reset(seed=0, options=options)
    lat: list[float] = []

    def on_step(env, reward, info):
        lat.append(lateral_offset(env.route, np.array([env.scene.ego.x, env.scene.ego.y]))[0])
        return False

    drive(env, make_agent("lane_follow"), steps, on_step)
    return np.asarray(lat)


@pytest.mark.parametrize(("town_name", "route_id"),
                         [b2d_case("Town02", "24784"), b2d_case("Town01", "24841")])
def test_control_loss_b2d(make_env, town_name, route_id):
    env = b2d_env(make_env, town_name, route_id)
    (sc,) = env.scenarios
    assert sc.type_name == "ControlLoss"
    assert len(sc.debris) == 3
    with_noise = control_loss_drive(env, None)
    (sc,) = env.scenarios
    assert sc.perturbed_ticks > 0 and sc.current >= 1
    without = control_loss_drive(env, [])
    assert env.scenarios == []
    n = min(len(with_noise), len(without))
    trig = sc.status.trigger_tick
    # Identical until the ego reaches the first debris, then the noise pushes it off the lane centre.
    assert np.allclose(with_noise[: trig - 1], without[: trig - 1], atol=1e-6)
    assert np.max(np.abs(with_noise[:n] - without[:n])) > 0.02


# ------------------------------------------------------------------------------ procedural maps
@pytest.mark.parametrize(("direction", "model", "kind"), [
    ("right", "static.prop.advertisement", AgentKind.STATIC),
    ("left", "vehicle.tesla.model3", AgentKind.PARKED_VEHICLE),
])
def test_dynamic_object_crossing_grid(make_env, direction, model, kind):
    env, sc = grid_env(make_env, "W0toJ0_0", "J0_1toJ0_2", "DynamicObjectCrossing", 25.0, distance="45",
                       direction=direction, blocker_model=model, crossing_angle="10")
    ag = env.scene.agents
    b = ag.index(sc.blocker_id)
    assert ag.kind[b] == kind
    lat_b, _ = lateral_offset(env.route, ag.box[b, :2])
    lat_w, _ = lateral_offset(env.route, sc.actors.position(sc.walker_id))
    sign = -1.0 if direction == "right" else 1.0
    # Off the carriageway on the chosen side (the left side of a two-way street is beyond the oncoming lane).
    assert sign * lat_b > sc.side.edge and sign * lat_w > sc.side.edge
    assert sc.side.edge == pytest.approx(1.75 if direction == "right" else 5.25, abs=0.1)
    assert sc.reaction_time == pytest.approx(2.1 + 0.1 * 2)
    rec, speeds, infractions = drive_until_crossed(env, sc, "sc_walker", AgentKind.PEDESTRIAN)
    assert rec["in_lane"] is not None
    assert_reaction(env, infractions, speeds, "collision_pedestrian", "sc_walker")


def test_parking_crossing_pedestrian_grid(make_env):
    env, sc = grid_env(make_env, "W0toJ0_0", "J0_1toJ0_2", "ParkingCrossingPedestrian", 25.0, distance="40")
    assert not sc.parked_sumo  # one lane per direction: the car stands on the kerb
    ag = env.scene.agents
    k = ag.index(sc.parked_id)
    assert ag.kind[k] == AgentKind.PARKED_VEHICLE
    lat, _ = lateral_offset(env.route, ag.box[k, :2])
    assert -5.0 < lat < -(1.75 + 1.0)
    rec, speeds, infractions = drive_until_crossed(env, sc, "sc_walker", AgentKind.PEDESTRIAN)
    assert rec["in_lane"] is not None
    assert_reaction(env, infractions, speeds, "collision_pedestrian", "sc_walker")


def test_pedestrian_crossing_grid(make_env):
    env, sc = grid_env(make_env, "W0toJ0_0", "J0_1toJ0_2", "PedestrianCrossing", 20.0)
    jp = junction_passes(env.route, env.lanes)[0]
    assert sc.junction.junction == jp.junction == "J0_0"
    rec, speeds, infractions = drive_until_crossed(env, sc, "sc_walker", AgentKind.PEDESTRIAN)
    assert rec["in_lane"] is not None
    assert abs(rec["in_lane"][2] + ego_s(env) - sc.collision_s) < 30.0
    assert_reaction(env, infractions, speeds, "collision_pedestrian", "sc_walker")


@pytest.mark.parametrize(("first", "last", "turn"), [("W0toJ0_0", "J1_0toJ2_0", "left"),
                                                     ("W1toJ1_0", "J1_0toJ0_0", "right")])
def test_vehicle_turning_route_grid(make_env, first, last, turn):
    env, sc = grid_env(make_env, first, last, "VehicleTurningRoute", 20.0)
    assert sc.junction.turn == turn
    assert sc.collision_s == pytest.approx(sc.junction.exit_s + 11.0, abs=1.0)
    lat, _ = lateral_offset(env.route, sc.actors.position(sc.cyclist_id))
    assert lat < -sc.side.edge  # waits on the right of the road the ego turns into
    rec, speeds, infractions = drive_until_crossed(env, sc, "sc_bicycle", AgentKind.BICYCLE)
    assert rec["in_lane"] is not None
    assert rec["in_lane"][2] + ego_s(env) > sc.junction.exit_s  # after the turn
    assert_reaction(env, infractions, speeds, "collision_vehicle", "sc_bicycle")


@pytest.mark.parametrize(("first", "last", "turn", "side"), [("W0toJ0_0", "J1_0toJ2_0", "left", -1.0),
                                                             ("W1toJ1_0", "J1_0toJ0_0", "right", 1.0)])
def test_vehicle_turning_route_pedestrian_grid(make_env, first, last, turn, side):
    env, sc = grid_env(make_env, first, last, "VehicleTurningRoutePedestrian", 20.0)
    assert sc.junction.turn == turn
    lat, s = lateral_offset(env.route, sc.actors.position(sc.walker_id))
    # Left turn: from the right sidewalk; right turn: from the far (left) one, across the oncoming lane.
    assert side * lat > sc.side.edge and s == pytest.approx(sc.junction.exit_s, abs=2.0)
    rec, speeds, infractions = drive_until_crossed(env, sc, "sc_walker", AgentKind.PEDESTRIAN)
    assert rec["in_lane"] is not None
    assert_reaction(env, infractions, speeds, "collision_pedestrian", "sc_walker")


def test_crossing_bicycle_flow_grid(make_env):
    # J1_1 has traffic lights; the route goes straight through it.
    env, sc = grid_env(make_env, "J1_0toJ1_1", "J1_2toJ1_3", "CrossingBicycleFlow", 25.0,
                       traffic={"vehicles": 2, "pedestrians": 0}, flow_speed="6",
                       source_dist_interval="5,12")
    jp = sc.junction
    assert jp.junction == "J1_1" and jp.turn == "straight"
    assert sc._links(), "J1_1 should be signalised"
    route = env.route
    jk = np.flatnonzero((route.cum_length >= jp.entry_s) & (route.cum_length <= jp.exit_s))
    jpts = route.points[jk]
    seen: set[str] = set()
    crossed: set[str] = set()
    ego_red_after_trigger: list[int] = []

    def on_step(env, reward, info):
        ag = env.scene.agents
        for k, aid in enumerate(ag.ids):
            if not aid.startswith("sc_bikeflow"):
                continue
            assert sc.status.triggered, "a bicycle of the flow appeared before the trigger"
            assert ag.kind[k] == AgentKind.BICYCLE
            seen.add(aid)
            if np.min(np.hypot(jpts[:, 0] - ag.box[k, 0], jpts[:, 1] - ag.box[k, 1])) < 1.5:
                crossed.add(aid)
        if sc.status.triggered and 0.0 < sc.seconds_since_trigger(env.scene) < 4.0:
            lights = env.scene.lights
            ego_links = [i for i in range(len(lights.tls_id)) if lights.from_lane[i] == jp.in_lane]
            ego_red_after_trigger.extend(int(lights.state[i]) for i in ego_links)
        return len(crossed) >= 2 and ego_s(env) > jp.exit_s

    _, _, _, infractions = drive(env, make_agent("lane_follow"), 1200, on_step)
    assert len(seen) >= 3 and len(crossed) >= 2, (seen, crossed)
    # The light freezer holds the ego on red while the flow fills the junction.
    assert ego_red_after_trigger and all(s == LightState.RED for s in ego_red_after_trigger)
    assert ego_s(env) > jp.exit_s  # the ego got through after the bicycles
    assert not any(i["type"] == "scenario_timeout" for i in infractions)


def test_control_loss_grid(make_env):
    env = make_env(map="urban_grid", traffic=NO_TRAFFIC)
    route = grid_route(env, "W0toJ0_0", "J0_1toJ0_2")
    spec = spec_at(env, route, 20.0, "ControlLoss")
    lat_runs = []
    for scenarios in ([spec], []):
        env.reset(seed=0, options={"route": route, "scenarios": scenarios})
        lat: list[float] = []

        def on_step(env, reward, info, lat=lat):
            lat.append(lateral_offset(env.route, np.array([env.scene.ego.x, env.scene.ego.y]))[0])
            return ego_s(env) > 20.0 + 80.0

        drive(env, make_agent("lane_follow"), 600, on_step)
        if scenarios:
            (sc,) = env.scenarios
            assert sc.perturbed_ticks > 0 and sc.current == 3  # all three debris windows passed
            at = [route.points[int(np.searchsorted(route.cum_length, 20.0 + x))] for x in (14, 48, 74)]
            assert np.allclose(np.array(sc.debris), np.array(at), atol=0.5)  # on the route, as in CARLA
        lat_runs.append(np.asarray(lat))
    a, b = lat_runs
    n = min(len(a), len(b))
    assert np.max(np.abs(a[:n] - b[:n])) > 0.02


# ---------------------------------------------------------------------------- errors, sampler
def test_unplaceable_and_bad_parameters(make_env):
    env = make_env(map="urban_grid", traffic=NO_TRAFFIC)
    route = grid_route(env, "J0_0toJ0_1", "J0_0toJ0_1", last_s=70.0)  # one block, no junction
    for type_name, params, match in [
        ("PedestrianCrossing", {}, "no junction"),
        ("VehicleTurningRoute", {}, "no junction"),
        ("CrossingBicycleFlow", {}, "no junction"),
        ("DynamicObjectCrossing", {"direction": "up"}, "direction"),
        ("DynamicObjectCrossing", {"crossing_angle": "120"}, "crossing_angle"),
        ("DynamicObjectCrossing", {"blocker_model": "walker.pedestrian.0001"}, "blocker_model"),
        ("DynamicObjectCrossing", {"distance": "500"}, "beyond the route's end"),
        ("ParkingCrossingPedestrian", {"bogus": "1"}, "bogus"),
    ]:
        with pytest.raises(ScenarioError, match=match) as exc:
            env.reset(seed=0, options={"route": route, "scenarios": [spec_at(env, route, 5.0, type_name,
                                                                            **params)]})
        assert route.route_id in str(exc.value)
    # ControlLoss accepts (and ignores) the extra parameters some Bench2Drive training routes carry.
    spec = spec_at(env, route, 5.0, "ControlLoss", distance="100", direction="right", speed="60")
    env.reset(seed=0, options={"route": route, "scenarios": [spec]})
    (sc,) = env.scenarios
    assert sc.type_name == "ControlLoss" and len(sc.debris) == 2  # the 74 m spot lies past the route end


def test_sampler_hooks_place_every_type(make_env):
    load_library()
    for cls in TYPES:
        assert SCENARIOS[cls.type_name] is cls and cls.differs_from_carla
    env = make_env(map="urban_grid", traffic=NO_TRAFFIC)
    left = grid_route(env, "W0toJ0_0", "J2_0toJ3_0", last_s=50.0)  # left turn at J0_0, then straight
    straight = grid_route(env, "W1toJ1_0", "J1_2toJ1_3", last_s=70.0)
    rng = np.random.default_rng(3)
    for route in (left, straight):
        passes = junction_passes(route, env.lanes)
        for cls in TYPES:
            cands = cls.candidate_triggers(route, env.lanes)
            if cls in (VehicleTurningRoute, VehicleTurningRoutePedestrian) and route is straight:
                assert len(cands) == 0  # no turn on this route
                continue
            assert len(cands) > 0, (cls.type_name, route.route_id)
            assert np.all((cands >= 0) & (cands <= route.length))
            if cls in (PedestrianCrossing, VehicleTurningRoute, VehicleTurningRoutePedestrian,
                       CrossingBicycleFlow):
                ok = [jp for jp in passes if cls is not VehicleTurningRoute or jp.turn != "straight"]
                for s in cands:
                    assert any(10.0 - 1e-6 <= jp.entry_s - s <= 40.0 + 1e-6 for jp in ok), (cls.type_name, s)
            for s in (cands[0], cands[len(cands) // 2], cands[-1]):
                params = cls.sample_params(rng)
                assert set(params) <= set(cls.defaults)
                idx = int(np.searchsorted(route.cum_length, s))
                tp = env.lanes.world_to_carla(route.points[idx])
                trigger = (float(tp[0]), float(tp[1]), 0.0, 0.0)
                spec = ScenarioSpec(f"{cls.type_name}_s", cls.type_name, trigger, params)
                env.reset(seed=0, options={"route": route, "scenarios": [spec]})
                (sc,) = env.scenarios
                assert sc.status.implemented and sc.trigger_s == pytest.approx(s, abs=0.5)
                for _ in range(3):
                    env.step(np.array([0.5, 0.0, 0.0]))
    p = DynamicObjectCrossing.sample_params(np.random.default_rng(0))
    assert 30 <= int(p["distance"]["value"]) <= 60 and p["direction"]["value"] in ("left", "right")
    p = CrossingBicycleFlow.sample_params(np.random.default_rng(0))
    assert float(p["source_dist_interval"]["from"]) < float(p["source_dist_interval"]["to"])
