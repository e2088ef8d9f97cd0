"""The PDM-Lite-style expert (policies/expert.py): IDM stops (stopped car, red light), forecast braking for a
crossing vehicle, the stuck rule, obstacle bypass (same-direction lane on the highway, opposite lane on
the rural road) and yielding to an emergency vehicle, output shapes and registration."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import drive
from test_controllers import DT, _agents, _light_route_and_lights, simulate, straight_route

from envs.geometry import boxes_overlap
from envs.route_graph import Piece, build_route, join_pieces, route_graph
from envs.routes import ScenarioSpec
from envs.scene import AgentKind, EgoState, LightState, Route
from policies.base import AGENTS, make_agent
from policies.expert import ExpertAgent
from policies.simple_agent import LaneFollowAgent

FEW = {"vehicles": 2, "pedestrians": 0}


def test_registered_as_expert():
    agent = make_agent("expert")
    assert isinstance(agent, ExpertAgent) and AGENTS["expert"] is ExpertAgent
    assert agent.name == "expert" and agent.privileged


def test_stops_behind_stopped_vehicle_with_outputs_and_cause():
    route = straight_route(300.0)
    lead = (90.0, 0.0, 0.0, 2.4, 1.0)
    log = simulate(ExpertAgent(), route, seconds=25.0, agents=_agents([lead]))
    gaps = [(lead[0] - lead[3]) - (e.x + e.half_length) for e, _ in log]
    assert min(gaps) > 1.0 and gaps[-1] < 8.0
    assert log[-1][0].speed < 0.1
    # Cruising first: target speed from the speed limit (0.72 ratio), then slowing for the vehicle.
    cruise = [o.expert.desired_speed for e, o in log[:100]]
    assert max(cruise) == pytest.approx(0.72 * float(route.speed_limit[0]), abs=0.2)
    out = log[-1][1]
    assert out.path.shape == (20, 2) and out.speed_waypoints.shape == (10, 2)
    assert np.allclose(np.diff(out.path[:, 0]), 1.0, atol=0.05)
    causes = [o.expert.cause for _, o in log if o.expert.cause is not None]
    assert causes and causes[-1].kind == "vehicle" and causes[-1].id == "a0"
    assert causes[-1].distance == pytest.approx(gaps[-1], abs=0.5)
    assert out.expert.hazards["vehicle"] and not out.expert.hazards["collision"]
    assert out.expert.lane_change is None and not out.expert.stuck  # a VEHICLE is queued behind, not bypassed
    moving = [o for e, o in log[:60]]
    assert all(o.speed_waypoints[-1, 0] > o.speed_waypoints[0, 0] for o in moving[20:])


def test_stops_at_red_light():
    stop_x = 70.0
    route, lights = _light_route_and_lights(stop_x)
    log = simulate(ExpertAgent(), route, seconds=20.0, lights_at=lambda t: lights(LightState.RED))
    fronts = np.array([e.x + e.half_length for e, _ in log])
    assert fronts.max() < stop_x and fronts[-1] > stop_x - 5.0
    assert log[-1][0].speed < 0.1
    assert log[-1][1].expert.cause.kind == "red_light" and log[-1][1].expert.hazards["red_light"]
    assert not log[-1][1].expert.stuck  # waiting at a red light is not being stuck


def _crossing(agent, seconds: float = 6.0):
    """Ego at 10 m/s on a straight road; a car crosses from the right at 6 m/s, timed to meet it."""
    route = straight_route(300.0)
    agents = _agents([(40.0, -24.0, np.pi / 2, 2.4, 1.0)], velocity=np.array([[0.0, 6.0]]))
    start = agents.box[0].copy()

    def on_tick(tick, ego, out):
        agents.box[0, 1] = start[1] + 6.0 * DT * (tick + 1)

    log = simulate(agent, route, seconds, ego=EgoState(0.0, 0.0, 0.0, 10.0), agents=agents, on_tick=on_tick)
    hits = [k for k, (e, _) in enumerate(log)
            if boxes_overlap(e.box(), np.array([40.0, start[1] + 6.0 * DT * k, np.pi / 2, 2.4, 1.0]))]
    return log, hits


def test_predicted_collision_brakes_for_crossing_vehicle():
    _, hits = _crossing(LaneFollowAgent())
    assert hits, "the set-up must be a collision course for a planner without forecasting"
    log, hits = _crossing(ExpertAgent())
    assert not hits
    braked = [o for _, o in log if o.expert.hazards["collision"]]
    assert braked and all(o.control.brake == 1.0 for o in braked)
    assert braked[0].expert.cause.kind == "vehicle" and braked[0].expert.cause.id == "a0"


def test_stuck_rule_creeps_but_not_into_a_vehicle():
    route = straight_route(300.0)
    lead = (30.0, 0.0, 0.0, 2.4, 1.0)
    log = simulate(ExpertAgent(stuck_s=3.0, creep_s=2.0), route, seconds=20.0, agents=_agents([lead]))
    stuck = [k for k, (_, o) in enumerate(log) if o.expert.stuck]
    assert stuck, "never declared stuck"
    still = [k for k, (e, _) in enumerate(log) if e.speed < 0.1]
    assert stuck[0] > still[0] + int(2.9 / DT)  # only after 3 s at standstill
    gaps = [(lead[0] - lead[3]) - (e.x + e.half_length) for e, _ in log]
    assert min(gaps) > 0.3


# ------------------------------------------------------------------------------ closed loop in SUMO
def _lane_route(lanes, lane_id: str, length: float) -> Route:
    return build_route(route_graph(lanes), [Piece(lanes.lane(lane_id), 0.0, length)], "test")


def _spec(lanes, route: Route, s: float, type_name: str, **params: str) -> ScenarioSpec:
    k = int(np.searchsorted(route.cum_length, s))
    x, y = lanes.world_to_carla(route.points[k])
    return ScenarioSpec(f"{type_name}_t", type_name, (float(x), float(y), 0.0, 0.0),
                        {key: {"value": v} for key, v in params.items()})


def _run_expert(env, steps: int, stop_s: float | None = None):
    agent = make_agent("expert")
    outs, infractions = [], []
    act = agent.act

    def logged(obs, scene):
        out = act(obs, scene)
        outs.append(out)
        return out

    agent.act = logged

    def on_step(env, reward, info):
        infractions.extend(info["infractions"])
        return stop_s is not None and env.route.cum_length[env.scene.route_index] > stop_s

    drive(env, agent, steps, on_step)
    return outs, infractions


@pytest.mark.parametrize(("map_name", "lane_id", "scenario"), [
    ("highway", "main_in_1", "ParkedObstacle"),  # bypass in the next same-direction lane
    ("rural", "main_a_0", "ParkedObstacleTwoWays"),  # bypass in the opposite lane, oncoming flow
])
def test_bypasses_parked_obstacle(make_env, map_name, lane_id, scenario):
    env = make_env(map=map_name, traffic=FEW)
    route = _lane_route(env.lanes, lane_id, 300.0)
    env.reset(seed=0, options={"route": route, "scenarios": [_spec(env.lanes, route, 40.0, scenario,
                                                                    distance="60")]})
    (sc,) = env.scenarios
    obstacle_s = 100.0
    outs, infractions = _run_expert(env, 900, stop_s=obstacle_s + 30.0)
    assert env.route.cum_length[env.scene.route_index] > obstacle_s + 30.0, "did not get past the obstacle"
    bad = ("collision", "scenario_timeout")
    assert not [i for i in infractions if i["type"].startswith(bad)]
    shifts = [o.info["shift"] for o in outs if o.info["shift"] is not None]
    assert shifts and shifts[0]["reason"] == "bypass"
    opposite = map_name == "rural"
    assert (shifts[0]["offset"] > 0) if opposite else abs(shifts[0]["offset"]) > 2.5
    assert any(o.expert.lane_change for o in outs) and any(o.expert.hazards["bypass"] for o in outs)
    assert sc.status.triggered


def test_changes_lane_for_emergency_vehicle(make_env):
    env = make_env(map="highway", traffic=FEW)
    g = route_graph(env.lanes)
    res = g.search((env.lanes.lane("main_mid_1"), 20.0), [(env.lanes.lane("main_out_1"), 300.0)])[0]
    route = build_route(g, join_pieces([res[1]], g), "test")
    env.reset(seed=0, options={"route": route, "scenarios": [
        _spec(env.lanes, route, 60.0, "YieldToEmergencyVehicle", distance="30")]})
    (sc,) = env.scenarios
    outs, infractions = _run_expert(env, 1000)
    assert not [i for i in infractions if i["type"] == "yield_emergency_vehicle_infraction"]
    assert not [i for i in infractions if i["type"].startswith("collision")]
    shifts = [o.info["shift"] for o in outs if o.info["shift"] is not None]
    assert shifts and shifts[0]["reason"] == "emergency" and shifts[0]["agent_id"] == sc.EV
    assert any(o.expert.lane_change in ("left", "right") for o in outs)
    ag = env.scene.agents
    if sc.EV in ag.ids:  # the emergency vehicle got ahead of the ego
        k = ag.index(sc.EV)
        e = env.scene.ego
        assert (ag.box[k, 0] - e.x) * np.cos(e.yaw) + (ag.box[k, 1] - e.y) * np.sin(e.yaw) > 0.0
    assert int(AgentKind.EMERGENCY) == 4


def test_forecast_kernel_yielding_agent_stops_short_of_the_ego():
    """An agent that brakes once the ego is in its path (decel > 0) stops short of a standing ego; at
    constant velocity (decel 0) it runs into it. The kernel is the one the gap checks use."""
    from policies.expert import YIELD_REACTION_S, _first_overlap

    traj = np.tile([30.0, 0.0, 0.0], (60, 1))  # the ego stands at x = 30 for 6 s
    car = np.array([[0.0, 0.0, 0.0, 2.4, 1.0]])
    vel = np.array([[10.0, 0.0]])
    assert _first_overlap(traj, 2.45, 1.0, car, vel, 0.1, np.zeros(1), YIELD_REACTION_S) == 0
    assert _first_overlap(traj, 2.45, 1.0, car, vel, 0.1, np.full(1, 6.0), YIELD_REACTION_S) == -1
    # a car that notices too late (3 m/s^2 from 10 m/s needs 17 m + reaction) still hits it
    assert _first_overlap(traj, 2.45, 1.0, car, vel, 0.1, np.full(1, 3.0), YIELD_REACTION_S) == 0


def _stream(agent, n: int = 3, spacing: float = 15.0, speed: float = 8.0, seconds: float = 16.0):
    """The ego starts from standstill; `n` cars cross its road at x = 14 from the right, `spacing` m
    apart at `speed` m/s (gaps of under 2 s), then the road is free."""
    route = straight_route(200.0)
    y0 = np.array([-20.0 - spacing * k for k in range(n)])
    agents = _agents([(14.0, y, np.pi / 2, 2.4, 1.0) for y in y0], velocity=np.tile([0.0, speed], (n, 1)))

    def on_tick(tick, ego, out):
        agents.box[:, 1] = y0 + speed * DT * (tick + 1)

    log = simulate(agent, route, seconds, ego=EgoState(0.0, 0.0, 0.0, 0.0), agents=agents, on_tick=on_tick)
    cars = [np.stack([np.full(n, 14.0), y0 + speed * DT * k, np.full(n, np.pi / 2), np.full(n, 2.4),
                      np.full(n, 1.0)], axis=1) for k in range(len(log))]
    hits = [k for k, (e, _) in enumerate(log) if any(boxes_overlap(e.box(), c) for c in cars[k])]
    last_clear = (14.0 + 1.0 + 2.45 - y0[-1] + 1.0) / speed / DT  # tick the last car has left the ego lane
    return log, hits, last_clear


def test_waits_for_a_stream_of_crossing_cars_then_goes():
    """Crossing cars stop the expert (IDM, forecast, then the gap hold); it never enters their lane while
    one occupies it, and once the stream has passed it drives on."""
    log, hits, last_clear = _stream(ExpertAgent())
    assert not hits
    held = [k for k, (_, o) in enumerate(log) if o.expert.cause is not None
            and o.expert.cause.kind == "vehicle" and o.expert.target_speed == 0.0]
    assert held, "the stream must stop the ego"
    fronts = np.array([e.x + e.half_length for e, _ in log])
    assert fronts[: int(last_clear) - 25].max() < 13.0  # the cars' lane starts at x = 13
    assert log[-1][0].x > 30.0
