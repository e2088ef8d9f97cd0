"""Action Dreaming (envs/action_dreaming.py): alternative futures of a recorded frame on synthetic
straight roads, their geometry and speed profiles, and their allowed / safe labels."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from envs import action_dreaming as ad
from envs.geometry import from_ego_frame
from envs.scene import AgentKind
from envs.segments import Frame

T = 0.2 * np.arange(1, 11)  # the 10 recorded future steps
POSE = (10.0, 5.0, 0.3)  # the ego's world pose: not the identity, so the frame transforms are exercised
LANE_WIDTH = 3.5


def _world(p: np.ndarray) -> np.ndarray:
    return from_ego_frame(np.asarray(p, np.float64), *POSE)


def _agent(x0: float, y: float, v: float, kind: AgentKind = AgentKind.VEHICLE, heading: float = 0.0,
           hl: float = 2.3, hw: float = 1.0) -> tuple[int, np.ndarray, np.ndarray]:
    """(kind, box now, future boxes) of an agent at ego-frame (x0, y) driving at v along `heading`."""
    now = _world([x0, y])
    xy = _world(np.stack([x0 + np.cos(heading) * v * T, y + np.sin(heading) * v * T], -1))
    yaw = POSE[2] + heading
    fut = np.column_stack([xy, np.full(10, yaw), np.full(10, hl), np.full(10, hw)])
    return int(kind), np.array([*now, yaw, hl, hw]), fut


def _frame(speed: float = 8.0, agents: tuple = (), lanes: tuple = ((0.0, 1), (LANE_WIDTH, 1)),
           target_speed: float | None = None, with_path: bool = True, path_y=None) -> Frame:
    """A straight road along the ego's heading: lanes given as (ego-frame y, direction +-1), 3.5 m wide;
    the expert keeps its lane (or follows `path_y(x)`) at `speed`."""
    xs = np.arange(-30.0, 101.0, 2.0)
    rows, starts = [], [0]
    for y, direction in lanes:
        pts = _world(np.stack([xs[::direction], np.full(len(xs), y)], -1))
        rows.append(np.column_stack([pts, np.full(len(xs), LANE_WIDTH / 2)]))
        starts.append(starts[-1] + len(xs))
    s = np.arange(1.0, 21.0)
    path = np.stack([s, np.zeros(20) if path_y is None else path_y(s)], -1)
    kinds = np.array([a[0] for a in agents], np.int8)
    return Frame(
        tick=7, route_id="synthetic", town="none", image=None, speed=speed, target_points=np.zeros((2, 2)),
        command=4, path=path if with_path else None,
        speed_waypoints=np.stack([speed * 0.25 * np.arange(1, 11), np.zeros(10)], -1) if with_path else None,
        target_speed=speed if target_speed is None else target_speed,
        ego=np.array([*POSE[:2], POSE[2], speed]), agent_ids=[f"a{i}" for i in range(len(agents))],
        agent_kind=kinds, agent_box=np.array([a[1] for a in agents]).reshape(-1, 5),
        agent_speed=np.zeros(len(agents)), agent_future=np.array([a[2] for a in agents]).reshape(-1, 10, 5),
        expert_future=np.column_stack([_world(np.stack([speed * T, 0 * T], -1)), np.full(10, POSE[2])]),
        route=_world(np.stack([np.arange(-10.0, 81.0), np.zeros(91)], -1)),
        lanes=np.concatenate(rows) if rows else np.zeros((0, 3)), lane_start=np.array(starts, np.int32),
    )


def _dream(frame: Frame, kinds=None, seed: int = 0, **kw) -> dict[str, ad.DreamedAction]:
    out = ad.dream_actions(frame, np.random.default_rng(seed), kinds, **kw)
    return {a.kind: a for a in out}


def _spacing(a: ad.DreamedAction) -> np.ndarray:
    """Distances between consecutive speed waypoints, the ego's origin first."""
    wps = np.concatenate([np.zeros((1, 2)), a.speed_waypoints.astype(np.float64)])
    return np.hypot(*np.diff(wps, axis=0).T)


# ------------------------------------------------------------------------------------ interface
def test_kinds_and_reasons_are_the_prompt_keys():
    from policies.prompts import INSTRUCTIONS, REFUSE_REASONS

    assert set(ad.KINDS) == set(INSTRUCTIONS)
    assert set(ad.REASONS) == set(REFUSE_REASONS)


def test_all_kinds_have_the_policy_action_format():
    lead = _agent(14.0, 0.0, 2.0)
    out = ad.dream_actions(_frame(agents=(lead,)), np.random.default_rng(0))
    assert [a.kind for a in out] == [k for k in ad.KINDS if k != "lane_change_right"]  # no lane there
    for a in out:
        assert a.path.shape == (20, 2) and a.path.dtype == np.float32
        assert a.speed_waypoints.shape == (10, 2) and a.speed_waypoints.dtype == np.float32
        assert np.isfinite(a.path).all() and np.isfinite(a.speed_waypoints).all()
        assert a.reason in (None, *ad.REASONS)
        assert (a.reason is None) == (a.allowed and a.safe)
        assert (a.collision_kind is None) == a.safe


def test_unknown_kinds_and_frames_without_a_path_or_route_raise():
    frame = _frame()
    with pytest.raises(ValueError, match=r"kind\(s\) \['fly'\]; valid kinds: \['faster', .*'crash'\]"):
        ad.dream_actions(frame, np.random.default_rng(0), ["stop", "fly"])
    bare = dataclasses.replace(_frame(with_path=False), route=np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"synthetic@7: .*neither"):
        ad.dream_actions(bare, np.random.default_rng(0), ["stop"])


def test_the_frame_is_not_modified():
    frame = _frame(agents=(_agent(14.0, 0.0, 2.0), _agent(-9.0, 0.0, 8.0)))
    before = copy.deepcopy(frame)
    ad.dream_actions(frame, np.random.default_rng(0))
    for f in dataclasses.fields(Frame):
        a, b = getattr(frame, f.name), getattr(before, f.name)
        if isinstance(b, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f.name)
            assert a.dtype == b.dtype, f.name
        else:
            assert a == b, f.name


def test_same_seed_same_actions():
    frame = _frame(agents=(_agent(14.0, 0.0, 2.0),))
    a, b = _dream(frame, seed=3), _dream(frame, seed=3)
    for kind in a:
        np.testing.assert_array_equal(a[kind].speed_waypoints, b[kind].speed_waypoints)
        np.testing.assert_array_equal(a[kind].path, b[kind].path)


# ------------------------------------------------------------------------------------ geometry
def test_paths_are_1m_apart():
    frame = _frame(agents=(_agent(14.0, 1.5, 0.0),))
    for a in ad.dream_actions(frame, np.random.default_rng(1)):
        pts = np.concatenate([np.zeros((1, 2)), a.path.astype(np.float64)])
        np.testing.assert_allclose(np.hypot(*np.diff(pts, axis=0).T), 1.0, atol=0.02, err_msg=a.kind)


def test_speed_kinds_keep_the_expert_path_or_follow_the_route():
    bend = _frame(path_y=lambda s: 0.01 * s**2)
    np.testing.assert_allclose(_dream(bend, ["keep"])["keep"].path, bend.path, atol=1e-6)
    route_only = _frame(with_path=False)
    for kind, a in _dream(route_only, ["faster", "slower", "stop", "keep"]).items():
        np.testing.assert_allclose(a.path, np.stack([np.arange(1.0, 21.0), np.zeros(20)], -1), atol=1e-6,
                                   err_msg=kind)


def test_lane_change_to_an_existing_lane_ends_one_lane_over_and_is_allowed():
    out = _dream(_frame(), ["lane_change_left", "lane_change_right"])
    assert "lane_change_right" not in out  # no lane on the right: skipped
    a = out["lane_change_left"]
    assert a.path[-1, 1] == pytest.approx(LANE_WIDTH, abs=0.05)  # blended over <= 15 m of the 20
    assert a.path[0, 1] == pytest.approx(0.0, abs=0.05)
    assert np.all(np.diff(a.path[:, 1]) >= -1e-6)  # a smooth move to the left
    assert a.allowed and a.safe and a.reason is None
    assert a.speed_waypoints[-1, 1] > 0.0
    right = _dream(_frame(lanes=((0.0, 1), (-LANE_WIDTH, 1))), ["lane_change_right"])["lane_change_right"]
    assert right.path[-1, 1] == pytest.approx(-LANE_WIDTH, abs=0.05) and right.allowed


def test_lane_change_into_the_oncoming_lane_is_not_allowed():
    a = _dream(_frame(lanes=((0.0, 1), (LANE_WIDTH, -1))), ["lane_change_left"])["lane_change_left"]
    assert a.path[-1, 1] == pytest.approx(LANE_WIDTH, abs=0.05)
    assert not a.allowed and a.safe and a.reason == "not_allowed"


def test_lane_change_into_a_car_is_unsafe():
    beside = _agent(0.0, LANE_WIDTH, 8.0)  # level with the ego in the left lane, same speed
    a = _dream(_frame(agents=(beside,)), ["lane_change_left"])["lane_change_left"]
    assert not a.safe and a.collision_kind == "vehicle" and a.reason == "collision"


def test_no_lanes_no_lane_change_and_no_off_road_label():
    out = _dream(_frame(lanes=()))
    assert "lane_change_left" not in out and "lane_change_right" not in out
    assert all(a.reason != "off_road" for a in out.values())


# ------------------------------------------------------------------------------------ speed profiles
def test_keep_has_constant_spacing():
    a = _dream(_frame(speed=8.0), ["keep"])["keep"]
    np.testing.assert_allclose(_spacing(a), 8.0 * 0.25, atol=1e-4)
    assert a.final_speed == pytest.approx(8.0)


def test_stop_spacing_shrinks_to_rest():
    for speed in (3.0, 8.0):
        a = _dream(_frame(speed=speed), ["stop"])["stop"]
        gaps = _spacing(a)
        assert np.all(np.diff(gaps) <= 1e-4), gaps
        assert gaps[-1] < 1e-4 and a.final_speed == 0.0
        # braking at 3 .. 4.952 m/s^2 from `speed`
        assert speed**2 / (2 * 4.952) - 1e-3 <= a.speed_waypoints[-1, 0] <= speed**2 / (2 * 3.0) + 1e-3


def test_faster_slower_and_manoeuvre_profiles():
    out = _dream(_frame(speed=6.0, target_speed=8.0), ["faster", "slower", "crash", "lane_change_left"])
    gaps = _spacing(out["faster"])
    assert np.all(np.diff(gaps) >= -1e-4) and gaps[-1] > gaps[0]
    assert np.diff(gaps).max() <= 2.0 * 0.25 * 0.25 + 1e-4  # at most 2 m/s^2
    assert out["faster"].final_speed == pytest.approx(6.0 + 2.0 * 2.5)  # still accelerating to 11..13
    gaps = _spacing(out["slower"])
    assert np.all(np.diff(gaps) <= 1e-4) and 0.4 * 6.0 - 1e-6 <= out["slower"].final_speed <= 0.6 * 6.0 + 1e-6
    assert out["lane_change_left"].final_speed == pytest.approx(6.0)
    slow = _dream(_frame(speed=1.0), ["lane_change_left"])["lane_change_left"]
    assert slow.final_speed == pytest.approx(4.0)  # manoeuvres at >= 4 m/s


# ------------------------------------------------------------------------------------ labels
def test_stop_is_safe_and_faster_into_a_slow_lead_car_is_not():
    out = _dream(_frame(speed=8.0, agents=(_agent(12.0, 0.0, 2.0),)))
    assert out["stop"].safe and out["stop"].allowed and out["stop"].reason is None
    assert not out["faster"].safe and out["faster"].collision_kind == "vehicle"
    assert out["faster"].reason == "collision"


def test_crash_aims_at_the_agent_ahead_and_is_unsafe():
    ped = _agent(10.0, 1.5, 0.0, kind=AgentKind.PEDESTRIAN, hl=0.3, hw=0.3)
    far = _agent(-5.0, 0.0, 0.0)  # behind: no crash target
    a = _dream(_frame(speed=5.0, agents=(ped, far)), ["crash"])["crash"]
    assert a.target_kind == "pedestrian" and not a.safe and a.collision_kind == "pedestrian"
    assert a.reason == "collision"
    near = np.hypot(a.path[:, 0] - 10.0, a.path[:, 1] - 1.5).min()
    assert near < 0.6  # the path runs through the pedestrian
    assert a.path[0, 1] == pytest.approx(0.0, abs=0.1)  # and starts straight ahead


def test_crash_is_skipped_without_a_reachable_agent_ahead():
    assert _dream(_frame(agents=(_agent(-8.0, 0.0, 8.0),)), ["crash"]) == {}  # behind
    assert _dream(_frame(agents=(_agent(45.0, 0.0, 8.0),)), ["crash"]) == {}  # beyond 30 m
    assert _dream(_frame(speed=4.0, agents=(_agent(25.0, 0.0, 10.0),)), ["crash"]) == {}  # runs away


def test_speed_rule_faster_at_cruise_is_not_allowed_but_from_rest_it_is():
    cruise = _dream(_frame(speed=10.0), ["faster", "keep"])
    assert cruise["faster"].safe and not cruise["faster"].allowed and cruise["faster"].reason == "not_allowed"
    assert cruise["keep"].allowed
    start = _dream(_frame(speed=0.0, target_speed=10.0), ["faster"])["faster"]
    assert start.allowed and start.final_speed == pytest.approx(5.0)
    red = _frame(speed=8.0, target_speed=0.0)  # the expert must stop: its waypoints come to rest
    red.speed_waypoints = np.stack([np.minimum(8.0 * 0.25 * np.arange(1, 11), 6.0), np.zeros(10)], -1)
    out = _dream(red, ["keep", "stop"])
    assert out["keep"].reason == "not_allowed" and out["stop"].allowed


def test_leaving_the_lanes_is_off_road():
    frame = _frame(lanes=((0.0, 1),), path_y=lambda s: -0.4 * s)  # veers off to the right
    a = _dream(frame, ["keep"])["keep"]
    assert a.safe and not a.allowed and a.reason == "off_road"


def test_followers_are_left_out_unless_asked():
    follower = _agent(-7.0, 0.0, 8.0)  # right behind at the ego's speed: its recording rear-ends a stop
    frame = _frame(speed=8.0, agents=(follower,))
    assert _dream(frame, ["stop"])["stop"].safe
    strict = _dream(frame, ["stop"], ignore_followers=False)["stop"]
    assert not strict.safe and strict.collision_kind == "vehicle"
