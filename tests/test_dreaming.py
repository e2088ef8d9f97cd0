"""The Scenario Dreaming pseudo-simulator (envs/dreaming.py): geometry against exact references,
the bicycle model against its closed form, rollouts through the controller twin, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from envs import dreaming as dr
from envs.dynamics import LR, bicycle_step_scalars, slip_angle
from envs.geometry import box_corners, pairwise_overlap
from envs.segments import Frame

T = 0.2 * np.arange(1, 11)  # the 10 step times


def _scene(agents: list[np.ndarray] | None = None, speed: float = 8.0, expert_speed: float | None = None,
           **kw) -> dr.DreamScene:
    """Ego at the origin heading +x; agents as (10, 5) future boxes; the expert drives straight."""
    fut = np.stack(agents) if agents else np.zeros((0, 10, 5))
    v = speed if expert_speed is None else expert_speed
    return dr.DreamScene(
        ego=np.array([0.0, 0.0, 0.0, speed]), ego_extent=np.array([2.45, 1.06]),
        agent_box=fut[:, 0] if len(fut) else np.zeros((0, 5)), agent_kind=np.zeros(len(fut), np.int8),
        agent_future=fut, expert_future=np.stack([v * T, np.zeros(10), np.zeros(10)], -1), **kw,
    )


def _straight(speed: float, b: int = 1, g: int = 1, lateral: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Candidates: a path 1 m apart drifting `lateral` m per 20 m, speed waypoints at constant speed."""
    s = np.arange(1.0, 21.0)
    path = np.broadcast_to(np.stack([s, lateral * s / 20.0], -1), (b, g, 20, 2)).copy()
    t = 0.25 * np.arange(1, 11)
    wps = np.broadcast_to(np.stack([speed * t, np.zeros(10)], -1), (b, g, 10, 2)).copy()
    return path, wps


def _parked(x: float, y: float = 0.0, yaw: float = 0.0) -> np.ndarray:
    return np.tile([x, y, yaw, 2.3, 1.0], (10, 1)).astype(float)


# ------------------------------------------------------------------------------------- geometry
def _polygons(boxes: np.ndarray) -> np.ndarray:
    return shapely.polygons(np.stack([box_corners(b) for b in boxes]))


def test_box_overlap_agrees_with_exact_polygon_intersection_on_100k_pairs():
    rng = np.random.default_rng(0)
    n = 100_000
    def boxes() -> np.ndarray:
        return np.column_stack([rng.uniform(-4, 4, (n, 2)), rng.uniform(-np.pi, np.pi, n),
                                rng.uniform(0.2, 3.0, n), rng.uniform(0.2, 1.5, n)])
    a, b = boxes(), boxes()
    pa, pb = _polygons(a), _polygons(b)
    exact = shapely.intersects(pa, pb)
    touching = shapely.distance(pa, pb) < 1e-9
    touching &= shapely.area(shapely.intersection(pa, pb)) < 1e-9  # boundaries meet, interiors do not
    ours = pairwise_overlap(a, b)
    agree = ours == exact
    assert exact.sum() > 20_000 and (~exact).sum() > 20_000  # both outcomes well represented
    assert agree[~touching].all(), np.flatnonzero(~agree & ~touching)[:5]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_agents=st.integers(0, 40), g=st.integers(1, 6))
def test_pruned_overlaps_equal_brute_force(seed, n_agents, g):
    """Skipping agents that cannot reach a candidate never drops an overlap (property test)."""
    rng = np.random.default_rng(seed)
    agents = []
    for _ in range(n_agents):
        p, yaw, v = rng.uniform(-40, 40, 2), rng.uniform(-np.pi, np.pi), rng.uniform(0, 12)
        fut = np.column_stack([p[0] + math.cos(yaw) * v * T, p[1] + math.sin(yaw) * v * T, np.full(10, yaw),
                               np.full(10, rng.uniform(0.3, 2.5)), np.full(10, rng.uniform(0.3, 1.2))])
        fut[rng.uniform(size=10) < 0.1] = np.nan  # agents leave and come back
        agents.append(fut)
    batch = dr.DreamBatch.stack([_scene(agents), _scene(agents[: n_agents // 2])])
    traj = rng.uniform(-30, 30, (2, g, 10, 4))
    traj[..., 3] = rng.uniform(0, 15, (2, g, 10))
    got = dr.overlaps(batch, traj)
    want = np.zeros_like(got)
    for b in range(2):
        ext = batch.ego_extent[b]
        for gi in range(g):
            for h in range(10):
                ego = np.array([[*traj[b, gi, h, :3], *ext]])
                boxes = batch.agent_future[b, : batch.n_agents[b], h]
                boxes = boxes[np.isfinite(boxes).all(axis=1)]
                hits = pairwise_overlap(np.repeat(ego, len(boxes), 0), boxes)
                want[b, gi, h] = bool(len(boxes)) and hits.any()
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------------- dynamics
@pytest.mark.parametrize("steer", [0.15, -0.4, 1.0])
def test_bicycle_matches_the_closed_form_circle_for_constant_steering(steer):
    """At constant speed and steer the kinematic bicycle turns at yaw rate v sin(beta) / lr on a circle
    of radius lr / sin(beta); explicit Euler with small steps stays on it."""
    beta = slip_angle(steer)
    radius = LR / abs(math.sin(beta))
    v, dt = 6.0, 0.001
    x = y = yaw = 0.0
    # the centre lies perpendicular to the direction of motion (yaw + beta) at the radius
    cx, cy = -math.sin(beta) * radius * np.sign(steer), math.cos(beta) * radius * np.sign(steer)
    t_end = 2.0 * math.pi * radius / v  # one lap
    for k in range(int(t_end / dt)):
        x, y, yaw_new, _ = bicycle_step_scalars(x, y, yaw, v, steer, 0.0, dt)
        dyaw = math.atan2(math.sin(yaw_new - yaw), math.cos(yaw_new - yaw))
        assert dyaw == pytest.approx(v * math.sin(beta) / LR * dt, rel=1e-9)
        yaw = yaw_new
        if k % 500 == 0:
            assert math.hypot(x - cx, y - cy) == pytest.approx(radius, rel=2e-3)
    assert math.hypot(x, y) < 0.05 * radius  # back near the start after one lap


# ------------------------------------------------------------------------------------- rollouts
def test_rollout_tracks_a_straight_path_at_the_waypoints_speed():
    batch = dr.DreamBatch.stack([_scene(speed=8.0)])
    path, wps = _straight(8.0)
    traj = dr.rollout(batch, path, wps)
    assert traj.shape == (1, 1, 10, 4)
    np.testing.assert_allclose(traj[0, 0, :, 1], 0.0, atol=1e-9)
    np.testing.assert_allclose(traj[0, 0, :, 3], 8.0, atol=0.5)
    assert np.all(np.diff(traj[0, 0, :, 0]) > 1.3)


def test_rollout_follows_a_curve_and_stops_for_stop_waypoints():
    batch = dr.DreamBatch.stack([_scene(speed=5.0)] * 2)
    t = 0.25 * np.arange(1, 11)
    # Candidate 0: a left curve of radius 25 m at 5 m/s; candidate 1: stop waypoints (all at the origin).
    ang = np.arange(1.0, 21.0) / 25.0
    paths = np.zeros((2, 2, 20, 2))
    paths[:, 0] = np.stack([25 * np.sin(ang), 25 * (1 - np.cos(ang))], -1)
    paths[:, 1] = np.stack([np.arange(1.0, 21.0), np.zeros(20)], -1)
    wps = np.zeros((2, 2, 10, 2))
    wps[:, 0] = np.stack([25 * np.sin(5 * t / 25), 25 * (1 - np.cos(5 * t / 25))], -1)
    traj = dr.rollout(batch, paths, wps)
    r = np.hypot(traj[0, 0, :, 0], traj[0, 0, :, 1] - 25.0)
    assert np.abs(r[3:] - 25.0).max() < 0.6  # on the curve once the PID has settled
    assert traj[0, 0, -1, 2] > 0.25  # heading turned left
    assert traj[0, 1, -1, 3] < 0.1 and traj[0, 1, 0, 3] < 5.0  # braked to a stop
    np.testing.assert_allclose(traj[0], traj[1])  # the same scene twice gives the same rollouts


def test_rollout_in_the_world_frame_and_with_deployment_substeps():
    scene = _scene(speed=6.0)
    scene.ego = np.array([100.0, -50.0, math.pi / 2, 6.0])
    batch = dr.DreamBatch.stack([scene])
    path, wps = _straight(6.0)
    traj = dr.rollout(batch, path, wps)
    np.testing.assert_allclose(traj[0, 0, :, 0], 100.0, atol=1e-6)  # driving north from (100, -50)
    assert traj[0, 0, -1, 1] > -50.0 + 10.0
    np.testing.assert_allclose(traj[0, 0, :, 2], math.pi / 2, atol=1e-6)
    fine = dr.rollout(batch, path, wps, substeps=4)  # the controller at the deployment's 20 Hz
    np.testing.assert_allclose(fine[0, 0, :, :2], traj[0, 0, :, :2], atol=1.5)


def test_overlaps_and_ttc_with_a_parked_car_ahead():
    batch = dr.DreamBatch.stack([_scene([_parked(20.0)], speed=10.0)])
    keep, stop = _straight(10.0), _straight(0.0)
    paths = np.concatenate([keep[0], stop[0]], axis=1)
    wps = np.concatenate([keep[1], stop[1]], axis=1)
    traj = dr.rollout(batch, paths, wps)
    hit = dr.overlaps(batch, traj)
    assert hit[0, 0].any() and not hit[0, 1].any()  # driving on hits it; braking does not
    first = int(np.argmax(hit[0, 0]))
    ttc = dr.ttc_violations(batch, traj, horizon_s=1.0)
    assert ttc[0, 0, first - 3: first].all()  # warned ahead of the contact
    assert not ttc[0, 1].any()


def test_scene_from_a_recorded_frame_and_resampled_futures():
    fut = np.stack([np.column_stack([20 + 5 * T, np.zeros(10), np.zeros(10), np.full(10, 2.0), np.ones(10)])])
    fut[0, 7:] = np.nan  # the agent left after 1.4 s
    frame = Frame(tick=40, route_id="r1", town="Town01", image=None, speed=5.0,
                  target_points=np.zeros((2, 2)), command=4, ego=np.array([1.0, 2.0, 0.1, 5.0]),
                  agent_ids=["a"], agent_kind=np.array([0], np.int8), agent_box=fut[:, 0] - [1, 0, 0, 0, 0],
                  agent_future=fut,
                  expert_future=np.column_stack([1 + 5 * T, np.full(10, 2.0), np.zeros(10)]))
    s = dr.DreamScene.from_frame(frame)
    np.testing.assert_array_equal(s.agent_future, fut)
    assert s.ego_extent.tolist() == [2.45, 1.06] and s.source == "frame r1@40"
    fine = dr.DreamScene.from_frame(frame, horizon=20, dt=0.1)  # 10 Hz: interpolated between records
    assert fine.agent_future.shape == (1, 20, 5)
    np.testing.assert_allclose(fine.agent_future[0, 2, 0], 20 + 5 * 0.3)
    assert np.isnan(fine.agent_future[0, 14:]).all() and np.isnan(fine.agent_future[0, 0]).all()
    np.testing.assert_allclose(fine.expert_future[3, 0], 1 + 5 * 0.4)
    with pytest.raises(dr.DreamError, match="horizon 10"):
        dr.DreamBatch.stack([fine])


def test_bad_candidates_and_frames_are_named():
    batch = dr.DreamBatch.stack([_scene()])
    path, wps = _straight(5.0, g=3)
    with pytest.raises(dr.DreamError, match=r"paths must be \(B=1, G, 20, 2\)"):
        dr.rollout(batch, path[:, :, :10], wps)
    with pytest.raises(dr.DreamError, match="speed_waypoints must be"):
        dr.rollout(batch, path, wps[:, :2])
    bad = wps.copy()
    bad[0, 2, 4, 1] = np.nan
    with pytest.raises(dr.DreamError, match="speed_waypoints of scene 0 candidate 2 contain NaN"):
        dr.rollout(batch, path, bad)
    with pytest.raises(dr.DreamError, match="trajectories must be"):
        dr.overlaps(batch, np.zeros((1, 3, 9, 4)))
    frame = Frame(tick=1, route_id="r", town="", image=None, speed=0.0, target_points=np.zeros((2, 2)),
                  command=4, ego=np.array([0.0, np.nan, 0.0, 0.0]))
    with pytest.raises(dr.DreamError, match="frame r@1: ego state"):
        dr.DreamScene.from_frame(frame)
    with pytest.raises(dr.DreamError, match="empty batch"):
        dr.DreamBatch.stack([])


def test_warm_up_compiles_once():
    dr.warm_up()
    assert dr._WARM
    dr.warm_up()  # a no-op the second time


# ------------------------------------------------------------------------- from recorded takeovers
def test_scenes_rebuilt_from_a_recorded_takeover_rank_the_expert_above_the_policy(make_env):
    """Record a Follow takeover (a constant-throttle policy towards a parked car), rebuild the frames'
    scenes and score two candidates per frame: the expert's own labels and the policy's "keep going"."""
    from test_takeover import _blocked_route

    from envs.rewards import Reward, Rollouts
    from envs.takeover import TakeoverCollector
    from policies.base import make_agent

    env, route = _blocked_route(make_env)
    col = TakeoverCollector(env, make_agent("constant", throttle=0.6), make_agent("lane_follow"),
                            {"triggers": ["follow"], "max_ticks": 300})
    seg = col.run_episode({"route": route}, seed=0)[0]
    frames = [f for f, pre in zip(seg.frames, seg.pre_takeover, strict=True) if not pre][:30:3]
    scenes = [dr.DreamScene.from_frame(f) for f in frames]
    assert all(len(s.route) > 50 and s.ego_extent[0] > 2.0 for s in scenes)  # the local map came along
    batch = dr.DreamBatch.stack(scenes)
    keep_path, keep_wps = _straight(float(frames[0].ego[3]), b=len(frames))
    paths = np.stack([np.stack([f.path for f in frames]), keep_path[:, 0]], axis=1)
    wps = np.stack([np.stack([f.speed_waypoints for f in frames]), keep_wps[:, 0]], axis=1)
    traj = dr.rollout(batch, paths, wps)
    res = Reward()(Rollouts(batch, traj))
    # The expert's own waypoints, driven through the controller, stay near its intended trajectory...
    assert res.terms["distance"][:, 0].mean() < 1.0, res.terms["distance"][:, 0]
    # ...and never reach the parked car; keeping the speed does, and scores lower.
    assert not res.terms["collision"][:, 0].any() and res.terms["collision"][:, 1].any()
    assert (res.returns[:, 0] >= res.returns[:, 1]).all() and (res.returns[:, 0] > res.returns[:, 1]).any()
