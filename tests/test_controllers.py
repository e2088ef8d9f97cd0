"""Closed-loop tests of the controllers and the simple agents on hand-built routes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.geometry import to_ego_frame
from envs.scene import (
    AgentKind,
    Agents,
    EgoState,
    LightState,
    Observation,
    RoadOption,
    Route,
    Scene,
    StopSigns,
    TrafficLights,
)
from policies.base import AGENTS, Control, make_agent
from policies.controller import (
    LateralPID,
    LongitudinalPID,
    WaypointController,
    densify_path,
    desired_speed_from_waypoints,
)
from policies.simple_agent import ConstantAgent, LaneFollowAgent

DT = 0.05
LIMIT = 50.0 / 3.6  # route speed limit; lane_follow cruises at 0.72 of it = 10 m/s


# ------------------------------------------------------------------------------------ dynamics
class _TestBicycle:
    """Fallback ego model (PDM-Lite's kinematic bicycle, no resistance) if envs.dynamics is absent."""

    def step(self, ego: EgoState, throttle: float, brake: float, steer: float) -> EgoState:
        lr, lf = 1.4178, -0.0908
        beta = math.atan(lr / (lf + lr) * math.tan(0.3685 * min(max(steer, -1.0), 1.0)))
        out = ego.copy()
        out.x += ego.speed * math.cos(ego.yaw + beta) * DT
        out.y += ego.speed * math.sin(ego.yaw + beta) * DT
        out.yaw += ego.speed / lr * math.sin(beta) * DT
        a = -4.952 * brake if brake > 0 else 3.0 * throttle
        out.speed = max(0.0, ego.speed + a * DT)
        return out


def _dynamics():
    try:
        from envs.dynamics import EgoDynamics

        return EgoDynamics()
    except Exception:  # pragma: no cover - depends on what exists in the tree
        return _TestBicycle()


# -------------------------------------------------------------------------------------- routes
def _route(points: np.ndarray, lane: np.ndarray | None = None) -> Route:
    points = np.asarray(points, np.float64)
    d = np.diff(points, axis=0)
    yaw = np.arctan2(d[:, 1], d[:, 0])
    yaw = np.concatenate([yaw, yaw[-1:]])
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(d[:, 0], d[:, 1]))])
    n = len(points)
    return Route(
        route_id="test",
        points=points,
        yaw=yaw,
        command=np.full(n, int(RoadOption.LANEFOLLOW), np.int8),
        lane=np.zeros(n, np.int32) if lane is None else lane.astype(np.int32),
        speed_limit=np.full(n, LIMIT),
        cum_length=cum,
        target_points=points[[0, -1]],
        target_commands=np.full(2, int(RoadOption.LANEFOLLOW), np.int8),
    )


def straight_route(length: float = 300.0) -> Route:
    x = np.arange(0.0, length + 1e-9, 0.1)
    return _route(np.stack([x, np.zeros_like(x)], axis=-1))


def curved_route(radius: float = 30.0) -> Route:
    """30 m straight east, a 90 degree left arc of `radius`, then 80 m straight north."""
    a = np.arange(0.0, 30.0, 0.1)
    p1 = np.stack([a, np.zeros_like(a)], axis=-1)
    th = np.arange(0.0, math.pi / 2, 0.1 / radius)
    p2 = np.stack([30.0 + radius * np.sin(th), radius * (1 - np.cos(th))], axis=-1)
    b = np.arange(0.0, 80.0, 0.1)
    p3 = np.stack([np.full_like(b, 30.0 + radius), radius + b], axis=-1)
    return _route(np.concatenate([p1, p2, p3]))


def _lateral_error(route: Route, x: float, y: float) -> float:
    return float(np.min(np.hypot(route.points[:, 0] - x, route.points[:, 1] - y)))


def _agents(boxes: list[tuple[float, float, float, float, float]], kinds: list[int] | None = None,
            velocity: np.ndarray | None = None) -> Agents:
    n = len(boxes)
    vel = np.zeros((n, 2)) if velocity is None else np.asarray(velocity, np.float64).reshape(n, 2)
    return Agents(
        ids=[f"a{i}" for i in range(n)],
        kind=np.asarray(kinds if kinds is not None else [int(AgentKind.VEHICLE)] * n, np.int8),
        box=np.asarray(boxes, np.float64).reshape(n, 5),
        height=np.full(n, 1.5),
        velocity=vel,
        speed=np.hypot(vel[:, 0], vel[:, 1]),
        accel=np.zeros(n),
        color=np.zeros((n, 3), np.uint8),
    )


def _obs(ego: EgoState) -> Observation:
    return Observation(image=None, speed=ego.speed, target_points=np.zeros((2, 2)),
                       command=int(RoadOption.LANEFOLLOW))


def simulate(agent, route: Route, seconds: float, ego: EgoState | None = None, agents: Agents | None = None,
             lights_at=None, stop_signs: StopSigns | None = None, on_tick=None):
    """Drive `agent` closed loop; returns the list of (ego, output) per tick."""
    dyn = _dynamics()
    ego = ego or EgoState(x=0.0, y=0.0, yaw=0.0, speed=0.0)
    agent.reset(route)
    log = []
    for tick in range(round(seconds / DT)):
        lights = lights_at(tick * DT) if lights_at else TrafficLights()
        scene = Scene(tick, tick * DT, ego=ego, agents=agents or Agents(), lights=lights,
                      stop_signs=stop_signs or StopSigns(), route=route, lanes=None)
        out = agent.act(_obs(ego), scene)
        log.append((ego, out))
        if on_tick:
            on_tick(tick, ego, out)
        c = out.control
        ego = dyn.step(ego, c.throttle, c.brake, c.steer)
    return log


# ------------------------------------------------------------------------------- unit checks
def test_lateral_pid_sign_and_lookahead():
    pid = LateralPID()
    assert pid.lookahead_points(0.0) == 24
    assert pid.lookahead_points(100.0) == 105
    assert pid.lookahead_points(10.0) == int(0.9755 * 36 + 1.915)
    x = np.arange(0.1, 12.0, 0.1)
    left = np.stack([x, 0.2 * x], axis=-1)
    assert pid.step(left, 5.0) > 0.0  # target to the left -> positive (left) steer
    pid.reset()
    assert pid.step(left * np.array([1.0, -1.0]), 5.0) < 0.0
    pid.reset()
    # World-frame path with a pose gives the same result as the ego-frame path.
    yaw = 0.7
    c, s = math.cos(yaw), math.sin(yaw)
    world = np.stack([3.0 + c * left[:, 0] - s * left[:, 1], -2.0 + s * left[:, 0] + c * left[:, 1]], axis=-1)
    a = LateralPID().step(left, 5.0)
    b = LateralPID().step(world, 5.0, np.array([3.0, -2.0]), yaw)
    assert a == pytest.approx(b)


def test_longitudinal_pid_brake_rule():
    lon = LongitudinalPID()
    assert lon.step(0.3, 0.0) == (0.0, 1.0)  # desired below 0.4 m/s
    assert lon.step(5.0, 5.6) == (0.0, 1.0)  # ratio 1.12 > 1.1
    lon.reset()
    thr, brk = lon.step(5.0, 3.0)
    assert brk == 0.0 and 0.0 < thr <= 0.75


def test_densify_and_desired_speed():
    path = np.stack([np.arange(1.0, 21.0), np.zeros(20)], axis=-1)
    dense = densify_path(path)
    assert dense[0] == pytest.approx([0.1, 0.0])
    assert np.allclose(np.diff(dense[:, 0]), 0.1)
    wps = np.stack([4.0 * 0.25 * np.arange(1, 11), np.zeros(10)], axis=-1)
    assert desired_speed_from_waypoints(wps) == pytest.approx(4.0)


# ---------------------------------------------------------------------------- lane following
def test_lane_follow_tracks_curve_and_reaches_speed():
    route = curved_route(30.0)
    agent = LaneFollowAgent()
    log = simulate(agent, route, seconds=20.0)
    end = route.points[-1]
    errors = [_lateral_error(route, e.x, e.y) for e, _ in log[60:]  # after 3 s of settling,
              if math.hypot(e.x - end[0], e.y - end[1]) > 3.0]  # while on the route (it stops past the end)
    assert max(errors) < 0.5, max(errors)
    final = log[-1][0]
    assert final.y > 60.0  # went round the bend and up the last straight
    out = log[-1][1]
    assert out.path.shape == (20, 2) and out.speed_waypoints.shape == (10, 2)
    assert out.language.startswith("Follow the route.")

    straight = straight_route(400.0)
    log = simulate(LaneFollowAgent(), straight, seconds=15.0)
    speeds = np.array([e.speed for e, _ in log])
    target = 0.72 * LIMIT
    assert abs(speeds[-40:].mean() - target) < 0.5, speeds[-40:].mean()
    assert speeds.max() < target + 1.0
    # Ego-frame path and speed waypoints are consistent with straight driving at ~target speed.
    out = log[-1][1]
    assert np.allclose(out.path[:, 1], 0.0, atol=0.3)
    assert np.allclose(np.diff(out.path[:, 0]), 1.0, atol=0.05)
    assert desired_speed_from_waypoints(out.speed_waypoints) == pytest.approx(target, abs=0.6)


def test_lane_follow_stops_behind_stopped_vehicle():
    route = straight_route(300.0)
    lead = (90.0, 0.0, 0.0, 2.4, 1.0)
    agents = _agents([lead])
    log = simulate(LaneFollowAgent(), route, seconds=25.0, agents=agents)
    gaps = [(lead[0] - lead[3]) - (e.x + e.half_length) for e, _ in log]
    assert min(gaps) > 1.0, min(gaps)
    final = log[-1][0]
    assert final.speed < 0.1
    assert gaps[-1] < 8.0  # it did close up rather than stop far away
    assert "behind the vehicle" in log[-1][1].language or "Remain stopped" in log[-1][1].language
    assert any("Decelerate to stay behind the vehicle" in o.language for _, o in log)
    assert any(o.info["cause"] == "vehicle" and o.info["cause_id"] == "a0" for _, o in log)


def test_lane_follow_blind_to_agents_drives_into_the_stopped_vehicle():
    """`see_agents=False`, the bottom reference: the same stopped lead is not braked for."""
    route = straight_route(300.0)
    lead = (90.0, 0.0, 0.0, 2.4, 1.0)
    log = simulate(LaneFollowAgent(see_agents=False), route, seconds=20.0, agents=_agents([lead]))
    passed = [e for e, _ in log if e.x - e.half_length > lead[0] + lead[3]]
    assert passed and min(e.speed for e in passed) > 8.0  # drove through it at cruise speed
    assert all(o.info["cause"] != "vehicle" for _, o in log)
    with pytest.raises(ValueError, match="see_agents must be true or false"):
        LaneFollowAgent(see_agents="no")


def test_lane_follow_follows_moving_vehicle_and_ignores_sidewalk():
    route = straight_route(400.0)

    # A pedestrian 5 m to the side (sidewalk) and a parked car in the next lane do not slow it down.
    side = _agents([(40.0, 5.0, 0.0, 0.3, 0.3), (60.0, -3.5, 0.0, 2.4, 1.0)],
                   kinds=[int(AgentKind.PEDESTRIAN), int(AgentKind.STATIC)])
    log = simulate(LaneFollowAgent(), route, seconds=12.0, agents=side)
    assert min(e.speed for e, _ in log[-60:]) > 0.72 * LIMIT - 1.0

    # A lead vehicle at 5 m/s: the ego slows to its speed and keeps a gap.
    dyn_lead = {"x": 40.0}

    def on_tick(tick, ego, out):
        dyn_lead["x"] += 5.0 * DT
        agents.box[0, 0] = dyn_lead["x"]

    agents = _agents([(40.0, 0.0, 0.0, 2.4, 1.0)], velocity=np.array([[5.0, 0.0]]))
    log = simulate(LaneFollowAgent(), route, seconds=25.0, agents=agents, on_tick=on_tick)
    gaps = []
    for tick, (e, _) in enumerate(log):
        lead_x = 40.0 + 5.0 * DT * tick
        gaps.append(lead_x - 2.4 - (e.x + e.half_length))
    assert min(gaps) > 1.0
    assert abs(log[-1][0].speed - 5.0) < 0.7


def _light_route_and_lights(stop_x: float):
    route = straight_route(300.0)
    lane = np.where(route.points[:, 0] < stop_x, 0, np.where(route.points[:, 0] < stop_x + 20.0, 1, 2))
    route = _route(route.points, lane)

    def lights_at(state: LightState) -> TrafficLights:
        return TrafficLights(
            tls_id=["tl0", "tl0"],
            state=np.array([int(state), int(LightState.GREEN)], np.int8),
            position=np.array([[stop_x, -3.0], [stop_x, 3.0]]),
            stop_line=np.array([[[stop_x, -1.75], [stop_x, 1.75]], [[stop_x, 1.75], [stop_x, 5.25]]]),
            from_lane=np.array([0, 5], np.int32),
            via_lane=np.array([1, 6], np.int32),  # second row: another approach, not on the route
        )

    return route, lights_at


def test_lane_follow_stops_at_red_and_goes_on_green():
    stop_x = 70.0
    route, lights = _light_route_and_lights(stop_x)
    green_at = 20.0
    log = simulate(LaneFollowAgent(), route, seconds=30.0,
                   lights_at=lambda t: lights(LightState.RED if t < green_at else LightState.GREEN))
    red = [(e, o) for k, (e, o) in enumerate(log) if k * DT < green_at]
    fronts = np.array([e.x + e.half_length for e, _ in red])
    assert fronts.max() < stop_x, fronts.max()
    assert fronts[-1] > stop_x - 5.0  # stopped close to the line
    assert red[-1][0].speed < 0.1
    assert "red light" in red[-1][1].language
    assert red[-1][1].info["red_light"]
    assert log[-1][0].x > stop_x + 15.0  # drove on after the light turned green


def test_lane_follow_light_fallback_on_incoming_lane():
    """Route lanes without the junction's via lane: the incoming lane's most restrictive link counts."""
    stop_x = 70.0
    route = straight_route(200.0)
    route = _route(route.points, np.where(route.points[:, 0] < stop_x, 0, 2))
    lights = TrafficLights(
        tls_id=["tl0", "tl0"],
        state=np.array([int(LightState.RED), int(LightState.GREEN)], np.int8),
        position=np.array([[stop_x, -3.0], [stop_x, -3.0]]),
        stop_line=np.array([[[stop_x, -1.75], [stop_x, 1.75]]] * 2),
        from_lane=np.array([0, 0], np.int32),
        via_lane=np.array([1, 7], np.int32),
    )
    log = simulate(LaneFollowAgent(), route, seconds=15.0, lights_at=lambda t: lights)
    e = log[-1][0]
    assert e.speed < 0.1 and stop_x - 5.0 < e.x + e.half_length < stop_x


def test_lane_follow_slower_in_junction_with_lanes():
    """With a lane graph, junction-internal lanes cap the speed at 30 km/h; without it they do not."""
    from types import SimpleNamespace

    route = straight_route(300.0)
    lane = np.where((route.points[:, 0] > 100.0) & (route.points[:, 0] < 130.0), 1, 0)
    route = _route(route.points, lane)
    lanes = SimpleNamespace(width=np.array([3.5, 3.5]), is_internal=np.array([False, True]))
    dyn = _dynamics()

    def run(with_lanes: bool) -> float:
        agent = LaneFollowAgent()
        agent.reset(route)
        ego = EgoState(0.0, 0.0, 0.0, 0.0)
        speeds = []
        for tick in range(int(20.0 / DT)):
            scene = Scene(tick, tick * DT, ego, Agents(), TrafficLights(), StopSigns(), route,
                          lanes if with_lanes else None)
            c = agent.act(_obs(ego), scene).control
            ego = dyn.step(ego, c.throttle, c.brake, c.steer)
            if 110.0 < ego.x < 130.0:
                speeds.append(ego.speed)
        return max(speeds)

    assert run(True) < 30.0 / 3.6 + 0.5
    assert run(False) > 0.72 * LIMIT - 0.5


def test_lane_follow_yellow_too_close_is_passed():
    stop_x = 60.0
    route, lights = _light_route_and_lights(stop_x)
    ego = EgoState(x=stop_x - 2.45 - 4.0, y=0.0, yaw=0.0, speed=10.0)  # 4 m before the line at 10 m/s
    yellow = lights(LightState.YELLOW)
    log = simulate(LaneFollowAgent(), route, seconds=2.0, ego=ego, lights_at=lambda t: yellow)
    assert log[-1][0].x > stop_x + 5.0


def test_lane_follow_stop_sign():
    stop_x = 50.0
    route = straight_route(200.0)
    lane = np.where(route.points[:, 0] < stop_x, 3, 4)
    route = _route(route.points, lane)
    signs = StopSigns(position=np.array([[stop_x, -3.0]]),
                      stop_line=np.array([[[stop_x, -1.75], [stop_x, 1.75]]]), lane=np.array([3], np.int32))
    log = simulate(LaneFollowAgent(), route, seconds=20.0, stop_signs=signs)
    fronts = np.array([e.x + e.half_length for e, _ in log])
    stopped = [k for k, (e, _) in enumerate(log) if e.speed < 0.05 and stop_x - 3.0 < fronts[k] < stop_x]
    assert stopped, "never stopped at the stop sign"
    assert fronts[: stopped[0]].max() < stop_x
    assert log[-1][0].x > stop_x + 20.0


def test_lane_follow_stops_at_route_end():
    route = straight_route(60.0)
    log = simulate(LaneFollowAgent(), route, seconds=20.0)
    e = log[-1][0]
    assert e.speed < 0.1
    assert 60.0 <= e.x <= 63.5  # centre just past the end: full route completion


def test_waypoint_controller_follows_waypoints():
    """Feed the controller the route ahead as path and a 6 m/s speed profile; it must track both."""
    route = curved_route(25.0)
    ctrl = WaypointController()
    dyn = _dynamics()
    ego = EgoState(0.0, 0.0, 0.0, 0.0)
    target = 6.0
    errors, speeds = [], []
    idx = 0
    for tick in range(int(22.0 / DT)):
        d = np.hypot(route.points[idx:idx + 400, 0] - ego.x, route.points[idx:idx + 400, 1] - ego.y)
        idx += int(np.argmin(d))
        s = route.cum_length[idx]
        path_idx = np.searchsorted(route.cum_length, s + np.arange(1.0, 21.0)).clip(0, len(route.points) - 1)
        wp_idx = np.searchsorted(route.cum_length, s + target * 0.25 * np.arange(1, 11)).clip(
            0, len(route.points) - 1)
        path = to_ego_frame(route.points[path_idx], ego.x, ego.y, ego.yaw)
        wps = to_ego_frame(route.points[wp_idx], ego.x, ego.y, ego.yaw)
        control = ctrl.step(path, wps, ego.speed)
        assert isinstance(control, Control)
        ego = dyn.step(ego, control.throttle, control.brake, control.steer)
        if tick * DT > 4.0:
            errors.append(_lateral_error(route, ego.x, ego.y))
            speeds.append(ego.speed)
    assert max(errors) < 0.5, max(errors)
    assert abs(np.mean(speeds) - target) < 0.6, np.mean(speeds)
    assert ego.y > 60.0


def test_waypoint_controller_stop_and_creep():
    path = np.stack([np.arange(1.0, 21.0), np.zeros(20)], axis=-1)
    stop = np.zeros((10, 2))
    ctrl = WaypointController()
    c = ctrl.step(path, stop, 3.0)
    assert c.brake == 1.0 and c.throttle == 0.0
    creeper = WaypointController(creep=True, stuck_time=1.0)  # 20 frames
    controls = [creeper.step(path, stop, 0.0) for _ in range(40)]
    assert all(c.brake == 1.0 for c in controls[:20])
    assert controls[21].throttle >= 0.4 and controls[21].brake == 0.0
    plain = WaypointController(stuck_time=1.0)  # creep is off by default
    assert all(plain.step(path, stop, 0.0).brake == 1.0 for _ in range(40))


# ----------------------------------------------------------------------------------- registry
def test_registry():
    agent = make_agent("lane_follow")
    assert isinstance(agent, LaneFollowAgent) and agent.privileged and agent.name == "lane_follow"
    const = make_agent("constant", throttle=0.3)
    assert isinstance(const, ConstantAgent) and not const.privileged
    out = const.act(_obs(EgoState(0.0, 0.0, 0.0, 2.0)), None)
    assert out.control.throttle == pytest.approx(0.3) and out.control.steer == 0.0
    assert out.path.shape == (20, 2) and out.speed_waypoints.shape == (10, 2)
    assert {"lane_follow", "constant"} <= set(AGENTS)
    with pytest.raises(ValueError) as exc:
        make_agent("no_such_agent")
    assert "lane_follow" in str(exc.value) and "constant" in str(exc.value)


def test_constant_agent_drives_straight():
    route = straight_route(100.0)
    log = simulate(ConstantAgent(throttle=0.5), route, seconds=5.0)
    e = log[-1][0]
    assert e.x > 10.0 and abs(e.y) < 1e-6
