"""Takeover triggers (envs/triggers.py) and the takeover collector / segment recorder (envs/takeover.py)."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
from helpers import drive, route_projection, straight_route

from envs.scene import AgentKind, Agents, EgoState, Observation, Route, Scene, StopSigns, TrafficLights
from envs.segments import FUTURE_STEPS, LANE_RADIUS, LANE_SPACING, ROUTE_AHEAD, ROUTE_BEHIND, scene_frame
from envs.takeover import TakeoverCollector, TakeoverConfig
from envs.triggers import (
    TRIGGERS,
    CollisionTrigger,
    FollowTrigger,
    RestartTrigger,
    TickInfo,
    make_trigger,
    predict_collisions,
)
from policies.base import AgentOutput, Cause, Control, ExpertState, make_agent
from policies.language import ENHANCEMENTS, LabelGenerator

EMPTY = {"vehicles": 0, "pedestrians": 0}
BLOCKER_AT = 80.0  # metres along the straight route where a stopped car stands


# ------------------------------------------------------------------------------ hand-made scenes
def _route() -> Route:
    pts = np.array([[0.0, 0.0], [100.0, 0.0]])
    return Route("hand", pts, np.zeros(2), np.full(2, 4, np.int8), np.zeros(2, np.int32), np.full(2, 13.9),
                 np.array([0.0, 100.0]), pts, np.full(2, 4, np.int8))


def _scene(speed: float, agents: list[tuple[float, float, float, float, float]] = (), tick: int = 0,
           kind: int = AgentKind.VEHICLE) -> Scene:
    """Ego at the origin heading +x; agents as (x, y, yaw, vx, vy) with a car's extent."""
    n = len(agents)
    a = np.array(agents, np.float64).reshape(n, 5)
    ag = Agents(
        ids=[f"a{k}" for k in range(n)],
        kind=np.full(n, kind, np.int8),
        box=np.column_stack([a[:, :3], np.full(n, 2.4), np.full(n, 1.0)]),
        height=np.full(n, 1.5),
        velocity=a[:, 3:5].copy(),
        speed=np.hypot(a[:, 3], a[:, 4]),
        accel=np.zeros(n),
        color=np.zeros((n, 3), np.uint8),
    )
    ego = EgoState(0.0, 0.0, 0.0, speed)
    return Scene(tick, tick * 0.05, ego, ag, TrafficLights(), StopSigns(), _route(), None)


def _info(scene: Scene, expert: AgentOutput | None = None, policy: AgentOutput | None = None) -> TickInfo:
    obs = Observation(None, scene.ego.speed, np.zeros((2, 2), np.float32), 4)
    return TickInfo(scene.tick, scene.time, 0.05, scene, obs, policy or AgentOutput(Control(0.6, 0.0, 0.0)),
                    expert or AgentOutput(Control(0.6, 0.0, 0.0)))


def _expert(target: float, speed: float, brake: float = 0.0, cause: Cause | None = None,
            hazards: dict | None = None) -> AgentOutput:
    es = ExpertState(target_speed=target, desired_speed=8.0, speed=speed, command=4, hazards=hazards or {},
                     cause=cause)
    return AgentOutput(Control(0.0 if brake else 0.5, brake, 0.0), language="Follow the route.", expert=es)


# ------------------------------------------------------------------------------ collision trigger
def test_collision_fires_for_stopped_car_ahead_and_crossing_agent():
    trig = CollisionTrigger()
    # Ego at 10 m/s, stopped car 12 m ahead: the front bumpers meet within 1 s.
    assert trig.update(_info(_scene(10.0, [(12.0, 0.0, 0.0, 0.0, 0.0)])))
    assert trig.last_hit[0] == "a0" and 0.0 < trig.last_hit[1] <= 1.0
    # A car crossing from the right that reaches the ego's path at 1 s.
    assert trig.update(_info(_scene(10.0, [(9.0, -10.0, math.pi / 2, 0.0, 10.0)])))


def test_collision_silent_for_safe_passes_and_honours_horizon():
    trig = CollisionTrigger()
    # Oncoming car in the adjacent lane (3.5 m left): passes at full speed without touching.
    assert not trig.update(_info(_scene(10.0, [(15.0, 3.5, math.pi, -10.0, 0.0)])))
    # A crossing car that has already crossed the path ahead (moving away to the left).
    assert not trig.update(_info(_scene(10.0, [(9.0, 4.0, math.pi / 2, 0.0, 10.0)])))
    # A stopped car 30 m ahead: no contact within 1 s at 10 m/s...
    far = _info(_scene(10.0, [(30.0, 0.0, 0.0, 0.0, 0.0)]))
    assert not trig.update(far)
    # ...but within a 3 s horizon (config threshold honoured, also from a dict).
    assert CollisionTrigger({"horizon": 3.0}).update(far)
    assert make_trigger("collision", {"horizon": 3.0}).update(far)
    # A car closing in from behind is ignored unless ignore_behind is off.
    behind = _info(_scene(5.0, [(-8.0, 0.0, 0.0, 15.0, 0.0)]))
    assert not trig.update(behind)
    assert CollisionTrigger(ignore_behind=False).update(behind)
    # Kinds filter: only pedestrians count -> the car is ignored.
    assert not CollisionTrigger(kinds=[int(AgentKind.PEDESTRIAN)]).update(
        _info(_scene(10.0, [(12.0, 0.0, 0.0, 0.0, 0.0)])))


def test_predict_collisions_time_of_contact():
    ego = np.array([0.0, 0.0, 0.0, 2.0, 1.0])
    boxes = np.array([[10.0, 0.0, 0.0, 2.0, 1.0], [10.0, 5.0, 0.0, 2.0, 1.0]])
    t = predict_collisions(ego, np.array([10.0, 0.0]), boxes, np.zeros((2, 2)), horizon=1.0, step=0.1)
    # Gap 6 m closed at 10 m/s: first overlap at 0.6 s; the second box never overlaps.
    assert t[0] == pytest.approx(0.6) and np.isinf(t[1])


# ------------------------------------------------------------------------------ follow trigger (unit)
def test_follow_needs_half_a_second_without_response():
    trig = FollowTrigger()
    braking = _expert(2.0, 8.0, brake=0.6, cause=Cause("vehicle", "a0", 10.0))
    ignoring = AgentOutput(Control(0.6, 0.0, 0.0))
    fired = [trig.update(_info(_scene(8.0, tick=k), braking, ignoring)) for k in range(12)]
    assert fired.index(True) == 9  # 10 ticks x 0.05 s = 0.5 s
    # A policy that brakes is a response: never fires.
    trig.reset()
    responding = AgentOutput(Control(0.0, 0.5, 0.0))
    assert not any(trig.update(_info(_scene(8.0, tick=k), braking, responding)) for k in range(40))
    # Over-speeding without a cause object is not a Follow situation (require_cause) unless configured.
    no_cause = _expert(2.0, 8.0, brake=0.6)
    trig.reset()
    assert not any(trig.update(_info(_scene(8.0, tick=k), no_cause, ignoring)) for k in range(40))
    loose = FollowTrigger(require_cause=False, response_time=0.25)
    assert [loose.update(_info(_scene(8.0, tick=k), no_cause, ignoring)) for k in range(6)].index(True) == 4


# ------------------------------------------------------------------------------ restart trigger (unit)
def test_restart_fires_for_stuck_ego_not_at_red_light_or_in_queue():
    wants_to_go = _expert(1.5, 0.0)
    stop = AgentOutput(Control(0.0, 1.0, 0.0))
    trig = RestartTrigger()
    fired = [trig.update(_info(_scene(0.0, tick=k), wants_to_go, stop)) for k in range(80)]
    assert fired.index(True) == 59  # 60 ticks = 3 s stuck
    red = _expert(0.0, 0.0, brake=1.0, cause=Cause("red_light", "tl1", 2.0), hazards={"red_light": True})
    trig.reset()
    assert not any(trig.update(_info(_scene(0.0, tick=k), red, stop)) for k in range(200))
    # Red-light hazard alone (the expert would otherwise creep): still held.
    red_flag = _expert(1.0, 0.0, hazards={"red_light": True})
    assert not any(trig.update(_info(_scene(0.0, tick=k), red_flag, stop)) for k in range(200))
    # The cause alone (a red light ahead, no hazard flag, the expert creeping) also holds.
    red_cause = _expert(1.0, 0.0, cause=Cause("red_light", "tl1", 6.0))
    assert not any(trig.update(_info(_scene(0.0, tick=k), red_cause, stop)) for k in range(200))
    # A queue: the car in front is 2 m away (closer than hold_distance).
    queue = _expert(0.8, 0.0, cause=Cause("vehicle", "a0", 2.0))
    assert not any(trig.update(_info(_scene(0.0, tick=k), queue, stop)) for k in range(200))
    # The expert only wants to go by its own stuck rule (creeping): not a restart, unless configured.
    creeping = _expert(1.5, 0.0)
    creeping.expert.stuck = True
    trig.reset()
    assert not any(trig.update(_info(_scene(0.0, tick=k), creeping, stop)) for k in range(200))
    counted = RestartTrigger({"count_expert_creep": True})
    assert [counted.update(_info(_scene(0.0, tick=k), creeping, stop)) for k in range(80)].index(True) == 59
    # Creeping at 0.5 m/s is not standing still.
    assert not any(trig.update(_info(_scene(0.5, tick=k), wants_to_go, stop)) for k in range(200))


def test_restart_dense_traffic_threshold():
    wants_to_go = _expert(1.5, 0.0)
    trig = RestartTrigger({"min_agents": 2, "stuck_time": 1.0})
    one = [(6.0, 0.0, 0.0, 0.0, 0.0)]
    assert not any(trig.update(_info(_scene(0.0, one, tick=k), wants_to_go)) for k in range(60))
    two = [*one, (0.0, 3.5, 0.0, 0.0, 0.0)]
    assert [trig.update(_info(_scene(0.0, two, tick=k), wants_to_go)) for k in range(30)].index(True) == 19


def test_trigger_registry_and_config_errors():
    assert {"follow", "collision", "restart"} <= set(TRIGGERS)
    with pytest.raises(ValueError, match="unknown trigger"):
        make_trigger("nope")
    with pytest.raises(ValueError, match="horizn"):
        make_trigger("collision", {"horizn": 2.0})
    with pytest.raises(ValueError, match="cannot import"):
        make_trigger("no_such_module_xyz:Trig")
    with pytest.raises(ValueError, match="t_pree"):
        TakeoverConfig.from_dict({"t_pree": 3})


# ------------------------------------------------------------------------------ closed loop
def _blocked_route(make_env, **traffic):
    env = make_env(map="highway", traffic={**EMPTY, **traffic})
    route = straight_route(env.lanes, 200.0)
    lane_id = env.lanes.lane_ids[int(route.lane[0])]
    reset = env.reset

    def reset_with_blocker(*args, **kwargs):
        out = reset(*args, **kwargs)
        env.backend.park_vehicle("blocker", lane_id, BLOCKER_AT, kind=int(AgentKind.VEHICLE))
        return out

    env.reset = reset_with_blocker
    return env, route


def test_follow_fires_when_constant_policy_ignores_stopped_car(make_env):
    env, route = _blocked_route(make_env)
    streamed = []
    col = TakeoverCollector(env, make_agent("constant", throttle=0.6), make_agent("lane_follow"),
                            {"triggers": ["follow"], "max_ticks": 300}, on_segment=streamed.append,
                            labeler=LabelGenerator(7).takeover_label)
    segs = col.run_episode({"route": route}, seed=0)
    assert segs and streamed == segs
    seg = segs[0]
    assert seg.trigger == "follow"
    at = seg.frames[20]
    assert at.tick == seg.trigger_tick and at.driver == "expert"
    assert at.cause == "vehicle" and at.ego[3] > 5.0  # following the stopped car at speed
    # The policy had not braked in the pre-takeover frames; the expert brakes during the takeover.
    assert all(f.control[1] == 0.0 and f.control[0] == pytest.approx(0.6) for f in seg.frames[:20])
    assert max(f.control[1] for f in seg.frames[20:]) > 0.3
    assert seg.frames[-1].ego[3] < at.ego[3] - 3.0
    # TakeVLA labels: the pre-takeover frames all carry the enhanced label of the expert's state at the
    # trigger (the same text as the trigger frame), urgent Follow wording naming the car; the takeover
    # frames are labelled from their own states, still Follow wording while the expert brakes.
    labels = [f.language for f in seg.frames]
    assert set(labels[:20]) == {at.language}
    openers = [o.lower() for o in ENHANCEMENTS["follow"].openers]
    assert any(o in at.language.lower() for o in openers)
    assert "car" in at.language or "vehicle" in at.language
    braking = [f.language for f in seg.frames[20:] if f.control[1] > 0.3]
    assert braking and all(any(o in t.lower() for o in openers) for t in braking)
    assert len(set(labels[20:])) > 1  # phrasing drawn per tick
    # Deterministic: the same seeds give the same text.
    again = TakeoverCollector(env, make_agent("constant", throttle=0.6), make_agent("lane_follow"),
                              {"triggers": ["follow"], "max_ticks": 300},
                              labeler=LabelGenerator(7).takeover_label).run_episode({"route": route}, seed=0)
    assert [f.language for f in again[0].frames] == labels


def test_follow_and_others_silent_when_policy_is_the_expert(make_env):
    env, route = _blocked_route(make_env)
    col = TakeoverCollector(env, make_agent("lane_follow"), make_agent("lane_follow"), {"max_ticks": 400})
    assert col.run_episode({"route": route}, seed=0) == []
    # It stopped behind the car and stood there for several seconds: Restart stays silent in the queue.
    assert env.scene.ego.speed < 0.1 and all(d == "policy" for _, d in col.log)
    assert sum(1 for _ in col.log) == 400


def test_segment_boundaries_masks_and_return_of_control(make_env):
    env, route = _blocked_route(make_env)
    cfg = TakeoverConfig(t_pre=8, t_take=12, triggers=["follow"], max_ticks=300)
    col = TakeoverCollector(env, make_agent("constant", throttle=0.6), make_agent("lane_follow"), cfg)
    seg = col.run_episode({"route": route}, seed=0)[0]
    assert len(seg.frames) == 20 and seg.pre_takeover.tolist() == [True] * 8 + [False] * 12
    ticks = [f.tick for f in seg.frames]
    assert ticks == list(range(seg.trigger_tick - 8, seg.trigger_tick + 12))
    for f in seg.frames[:8]:  # pre-takeover: language only (the expert's at the trigger), no action labels
        assert f.driver == "policy" and f.path is None and f.speed_waypoints is None
        assert math.isnan(f.target_speed) and f.language == seg.frames[8].language
        assert f.policy_path.shape == (20, 2)
    for f in seg.frames[8:]:  # takeover: the expert's labels
        assert f.driver == "expert" and f.path.shape == (20, 2) and f.speed_waypoints.shape == (10, 2)
        assert np.isfinite(f.target_speed) and f.language
    assert seg.info["pre_frames"] == 8 and seg.info["takeover_frames"] == 12 and not seg.info["truncated"]
    drivers = dict(col.log)
    t = seg.trigger_tick
    assert drivers[t - 1] == "policy" and all(drivers[k] == "expert" for k in range(t, t + 12))
    assert drivers[t + 12] == "policy"  # control returns to the policy
    assert all(f.image is None for f in seg.frames)  # the camera is off


USER_TRIGGER = """
from envs.triggers import Trigger

class FireAt(Trigger):
    name = "fire_at"

    def __init__(self, tick=40):
        self.tick = tick

    def update(self, info):
        return info.tick == self.tick
"""


def test_user_trigger_by_import_path_and_future_boxes(make_env, tmp_path, monkeypatch):
    (tmp_path / "my_triggers_e3.py").write_text(textwrap.dedent(USER_TRIGGER))
    monkeypatch.syspath_prepend(str(tmp_path))
    env = make_env(traffic={"vehicles": 30, "pedestrians": 10})
    col = TakeoverCollector(env, make_agent("lane_follow"), make_agent("lane_follow"),
                            TakeoverConfig(t_pre=20, t_take=30, max_ticks=200),
                            triggers=["my_triggers_e3:FireAt"])
    (seg,) = col.run_episode(seed=3)
    assert seg.trigger == "fire_at" and seg.trigger_tick == 40 and len(seg.frames) == 50
    by_tick = {f.tick: f for f in seg.frames}
    moved = checked = 0
    for f in seg.frames:
        assert f.agent_future.shape == (len(f.agent_ids), FUTURE_STEPS, 5)
        for j in range(FUTURE_STEPS):
            later = by_tick.get(f.tick + 4 * (j + 1))
            if later is None:
                continue
            for k, aid in enumerate(f.agent_ids):
                if aid in later.agent_ids:
                    box = later.agent_box[later.agent_ids.index(aid)]
                    np.testing.assert_allclose(f.agent_future[k, j], box)
                    moved += np.hypot(*(box[:2] - f.agent_box[k, :2])) > 1.0
                    checked += 1
                else:
                    assert np.isnan(f.agent_future[k, j]).all()
    assert checked > 300 and moved > 100  # real traffic that moves
    # The last frame's future comes from ticks after the segment (2 s were simulated past it).
    last = seg.frames[-1]
    assert len(last.agent_ids) and np.isfinite(last.agent_future[:, -1, 0]).any()
    # The expert's future trajectory starts at the ego and follows where the expert then drove.
    f = seg.frames[20]
    assert f.expert_future.shape == (FUTURE_STEPS, 3) and np.isfinite(f.expert_future).all()
    drove = by_tick[f.tick + 8].ego[:2]
    assert np.hypot(*(f.expert_future[1, :2] - drove)) < 1.0


def test_restart_segment_in_closed_loop(make_env):
    env = make_env(map="highway", traffic=EMPTY)
    route = straight_route(env.lanes, 200.0)
    col = TakeoverCollector(env, make_agent("constant", throttle=0.0, brake=1.0), make_agent("lane_follow"),
                            {"triggers": ["restart"], "trigger_params": {"restart": {"stuck_time": 1.0}},
                             "t_take": 40, "max_segments": 1, "max_ticks": 200})
    (seg,) = col.run_episode({"route": route}, seed=0)
    assert seg.trigger == "restart" and seg.trigger_tick == 19  # 20 ticks standing = 1 s
    assert seg.pre_takeover.sum() == 19  # the episode had only 19 ticks before the trigger
    assert seg.frames[-1].ego[3] > 2.0  # the expert drove off


class ScriptedEnv:
    """A minimal env double: the ego stands, agent "a0" drives +x at 1 m per tick and leaves after tick 12;
    the episode ends at tick 60."""

    def __init__(self) -> None:
        self.route = _route()

    def _make(self, tick: int) -> None:
        agents = [(float(tick), 5.0, 0.0, 20.0, 0.0)] if tick <= 12 else []
        self.scene = _scene(0.0, agents, tick=tick)

    def reset(self, seed=None, options=None):
        self._make(0)
        return {}, {}

    def observation(self) -> Observation:
        return Observation(None, 0.0, np.zeros((2, 2), np.float32), 4)

    def step(self, action):
        self._make(self.scene.tick + 1)
        return {}, 0.0, self.scene.tick >= 60, False, {"infractions": []}


def test_future_boxes_nan_when_gone_and_truncation_at_episode_end(tmp_path, monkeypatch):
    (tmp_path / "my_triggers_e3b.py").write_text(textwrap.dedent(USER_TRIGGER))
    monkeypatch.syspath_prepend(str(tmp_path))
    from my_triggers_e3b import FireAt

    col = TakeoverCollector(ScriptedEnv(), make_agent("constant", throttle=0.0), make_agent("constant"),
                            TakeoverConfig(t_pre=20, t_take=50), triggers=[FireAt(tick=20)])
    (seg,) = col.run_episode()
    assert seg.trigger_tick == 20 and seg.pre_takeover.sum() == 20
    assert seg.info["truncated"] and seg.info["takeover_frames"] == 40  # ticks 20..59, then the end
    f = seg.frames[5]  # tick 5: a0 at x = 9 at tick 9, gone from tick 13 on
    assert f.agent_ids == ["a0"]
    np.testing.assert_allclose(f.agent_future[0, 0], [9.0, 5.0, 0.0, 2.4, 1.0])
    assert np.isnan(f.agent_future[0, 2:]).all()
    # The constant expert's speed waypoints (standing ego) keep its future trajectory at the ego.
    np.testing.assert_allclose(f.expert_future, np.zeros((FUTURE_STEPS, 3)), atol=1e-9)
    assert seg.frames[-1].image is None and seg.frames[-1].agent_future.shape == (0, FUTURE_STEPS, 5)
    # A hand-made scene has no lane graph: the route ahead (ego at its start) but no lanes.
    np.testing.assert_allclose(f.route, np.column_stack([np.arange(81.0), np.zeros(81)]))
    assert f.lanes.shape == (0, 3) and f.lane_start.tolist() == [0]
    np.testing.assert_array_equal(f.ego_extent, [2.45, 1.06])


def test_restart_silent_while_waiting_at_red_light(make_env):
    """lane_follow waits at a red light for several seconds on this route; Restart (1 s) must not fire."""
    env = make_env(traffic=EMPTY)
    expert = make_agent("lane_follow")
    act = expert.act
    held_at_red: list[int] = []

    def spy(obs, scene):
        out = act(obs, scene)
        if scene.ego.speed < 0.1 and out.expert.cause is not None and out.expert.cause.kind == "red_light":
            held_at_red.append(scene.tick)
        return out

    expert.act = spy
    col = TakeoverCollector(env, make_agent("lane_follow"), expert,
                            {"triggers": ["restart"], "trigger_params": {"restart": {"stuck_time": 1.0}},
                             "max_ticks": 1000})
    assert col.run_episode(seed=0) == []
    assert len(held_at_red) >= 100  # 5 s standing at the red light, 5x the stuck time
    assert all(d == "policy" for _, d in col.log)


def test_frames_carry_camera_image_when_rendered(make_env, tmp_path, monkeypatch):
    (tmp_path / "my_triggers_e3c.py").write_text(textwrap.dedent(USER_TRIGGER))
    monkeypatch.syspath_prepend(str(tmp_path))
    from my_triggers_e3c import FireAt

    env = make_env(traffic=EMPTY, camera={"enabled": True, "width": 64, "height": 32})
    col = TakeoverCollector(env, make_agent("constant", throttle=0.3), make_agent("lane_follow"),
                            TakeoverConfig(t_pre=2, t_take=3, max_ticks=8), triggers=[FireAt(tick=3)])
    (seg,) = col.run_episode(seed=0)
    assert [f.image.shape for f in seg.frames] == [(32, 64, 3)] * 5
    assert all(f.image.dtype == np.uint8 and f.image.any() for f in seg.frames)
    col.config.record_images = False
    (seg,) = col.run_episode(seed=0)
    assert all(f.image is None for f in seg.frames)


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances from point p (2,) to the segments a[i]-b[i] ((N, 2) each)."""
    d = b - a
    ll = np.maximum((d * d).sum(axis=1), 1e-12)
    t = np.clip(((p - a) * d).sum(axis=1) / ll, 0.0, 1.0)
    return np.hypot(*(a + t[:, None] * d - p).T)


def _polyline_distance(p: np.ndarray, pts: np.ndarray) -> float:
    if len(pts) == 1:
        return float(np.hypot(*(pts[0] - p)))
    return float(_segment_distance(p, pts[:-1], pts[1:]).min())


def test_frames_carry_the_local_map(make_env):
    """Route ahead every metre from 10 m behind the ego, the drivable lanes around it (CSR), its size."""
    env = make_env(traffic=EMPTY)
    env.reset(seed=2)
    lanes = env.lanes
    checked = []

    def check(env, reward, info) -> bool:
        if env.scene.tick % 25:
            return False
        scene = env.scene
        f = scene_frame(scene, env.observation(), "r", "t")
        ego = f.ego[:2]
        np.testing.assert_array_equal(f.ego_extent, [scene.ego.half_length, scene.ego.half_width])
        # route: 1 m apart, from 10 m behind the ego's progress point (or the route's start) to 80 m ahead
        _, s = route_projection(env.route, ego)
        start_s = max(s - ROUTE_BEHIND, 0.0)
        start = [np.interp(start_s, env.route.cum_length, env.route.points[:, k]) for k in range(2)]
        assert np.hypot(*(f.route[0] - start)) < 1.0
        np.testing.assert_allclose(np.hypot(*np.diff(f.route, axis=0).T), 1.0, atol=0.02)
        want = min(s + ROUTE_AHEAD, env.route.length) - start_s
        assert abs(len(f.route) - 1 - want) < 1.5
        # lanes: CSR offsets, samples <= 2 m apart, positive half widths, every lane near the ego
        st = f.lane_start
        assert st.dtype == np.int32 and st[0] == 0 and st[-1] == len(f.lanes) and (np.diff(st) >= 1).all()
        assert f.lanes.shape[1] == 3 and (f.lanes[:, 2] > 0.5).all()
        near = 0
        for k in range(len(st) - 1):
            pts = f.lanes[st[k] : st[k + 1], :2]
            assert (np.hypot(*np.diff(pts, axis=0).T) <= LANE_SPACING + 1e-6).all()
            near += np.hypot(*(pts - ego).T).min() <= LANE_RADIUS
        assert near == len(st) - 1
        # the ego drives on one of them (within half the lane width, by the stored widths)
        rows = [f.lanes[st[k] : st[k + 1]] for k in range(len(st) - 1)]
        assert min(_polyline_distance(ego, r[:, :2]) - r[0, 2] for r in rows) <= 0.0
        # every drivable lane of the map (junction-internal ones included) that comes within the radius is
        # there, by count: between those within LANE_RADIUS - 1 m and LANE_RADIUS + 1 m of the ego
        dist = np.array([_polyline_distance(ego, lanes.polyline(i)) for i in range(len(lanes))])
        drivable = np.asarray(lanes.drivable, bool)
        assert ((dist <= LANE_RADIUS - 1.0) & drivable).sum() <= len(st) - 1
        assert len(st) - 1 <= ((dist <= LANE_RADIUS + 1.0) & drivable).sum()
        checked.append(int(((dist <= LANE_RADIUS - 1.0) & drivable & np.asarray(lanes.is_internal)).sum()))
        return False

    drive(env, make_agent("lane_follow"), 400, on_step=check)
    assert len(checked) >= 10 and max(checked) > 0  # junction-internal lanes were among them


class StandThenGoEnv(ScriptedEnv):
    """ScriptedEnv whose ego stands until tick 30, then drives at 3 m/s."""

    def _make(self, tick: int) -> None:
        super()._make(tick)
        self.scene.ego.speed = 0.0 if tick < 30 else 3.0


class AlwaysFires:
    name = "always"

    def reset(self) -> None:
        pass

    def update(self, info) -> bool:
        return True


def test_expert_keeps_control_while_the_ego_stands_after_a_takeover():
    """A policy that re-triggers at a standstill (the VLA creeping behind a queue) gets the car back only
    once the expert has moved off; without the hold the same takeover repeats every t_take ticks."""
    policy, expert = make_agent("constant", throttle=0.0), make_agent("constant")
    no_hold = TakeoverCollector(StandThenGoEnv(), policy, expert,
                                TakeoverConfig(t_pre=0, t_take=10, hold_speed=0.0), triggers=[AlwaysFires()])
    assert [s.trigger_tick for s in no_hold.run_episode()] == [0, 10, 20, 30, 40, 50]
    col = TakeoverCollector(StandThenGoEnv(), policy, expert, TakeoverConfig(t_pre=0, t_take=10),
                            triggers=[AlwaysFires()])
    segs = col.run_episode()
    # 0..9 recorded, 10..29 held (standing, unrecorded); from tick 30 the ego moves, so each takeover
    # hands back at once and the trigger fires again
    assert [s.trigger_tick for s in segs] == [0, 30, 40, 50] and [len(s.frames) for s in segs] == [10] * 4
    assert [t for t, driver in col.log if driver == "expert"] == list(range(60))
    with pytest.raises(ValueError, match="hold_speed must be >= 0"):
        TakeoverCollector(StandThenGoEnv(), policy, expert, {"hold_speed": -1.0})
