"""Reward terms and composition (envs/rewards.py) over pseudo-simulated rollouts."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from test_dreaming import T, _parked, _scene, _straight

from envs import dreaming as dr
from envs.rewards import (
    REWARD_TERMS,
    Reward,
    RewardConfig,
    RewardError,
    Rollouts,
    register_reward,
)


def _rollouts(scenes: list[dr.DreamScene], speeds: list[float], lateral: float = 0.0) -> Rollouts:
    batch = dr.DreamBatch.stack(scenes)
    cands = [_straight(v, b=len(scenes), lateral=lateral) for v in speeds]
    paths = np.concatenate([c[0] for c in cands], axis=1)
    wps = np.concatenate([c[1] for c in cands], axis=1)
    return Rollouts(batch, dr.rollout(batch, paths, wps))


def test_default_reward_is_minus_distance_minus_collision_discounted():
    r = _rollouts([_scene([_parked(20.0)], speed=8.0)], [8.0, 4.0, 0.0])
    res = Reward()(r)
    dist = np.hypot(r.traj[..., 0] - r.batch.expert_future[:, None, :, 0],
                    r.traj[..., 1] - r.batch.expert_future[:, None, :, 1])
    col = 30.0 * dr.overlaps(r.batch, r.traj)
    np.testing.assert_allclose(res.per_step, -dist - col)
    np.testing.assert_allclose(res.returns, (-dist - col) @ (0.9 ** np.arange(10)))
    assert set(res.terms) == {"distance", "collision"}
    assert col[0, 0].any() and not col[0, 2].any()  # keeping 8 m/s hits the parked car, stopping does not


def test_following_the_expert_exactly_gets_the_maximal_distance_reward():
    r = _rollouts([_scene(speed=8.0)], [8.0, 6.0, 10.0, 0.0], lateral=3.0)
    # The expert's recorded future is exactly what candidate 0 drove.
    r.batch.expert_future[0] = r.traj[0, 0, :, :3]
    res = Reward({"terms": {"distance": -1.0}})(r)
    np.testing.assert_array_equal(res.terms["distance"][0, 0], 0.0)
    assert res.returns[0, 0] == 0.0 and (res.returns[0, 1:] < -1.0).all()
    # Unknown expert future (the episode ended): no distance signal there.
    r.batch.expert_future[0, 6:] = np.nan
    res = Reward({"terms": {"distance": -1.0}})(Rollouts(r.batch, r.traj))
    assert (res.terms["distance"][:, :, 6:] == 0).all() and (res.terms["distance"][0, 1:, :6] > 0).any()


def test_progress_comfort_ttc_and_drivable_terms():
    route = np.stack([np.arange(-10.0, 80.0), np.zeros(90)], -1)
    lanes = np.column_stack([np.arange(-10.0, 80.0, 2.0), np.zeros(45), np.full(45, 1.75)])
    scene = _scene([_parked(20.0)], speed=10.0, route=route, lanes=lanes,
                   lane_start=np.array([0, 45], np.int32))
    r = _rollouts([scene], [10.0, 0.0])
    terms = {n: 1.0 for n in ("progress", "comfort", "ttc", "drivable")}
    res = Reward({"terms": terms, "params": {"ttc": {"horizon_s": 1.0}}})(r)
    prog = res.terms["progress"][0]
    np.testing.assert_allclose(prog[0].sum(), r.traj[0, 0, -1, 0], atol=1e-9)  # metres along the route
    assert prog[1].sum() < 0.6 * prog[0].sum()  # braking at 4.95 m/s^2 from 10 m/s: about 10 m
    # Braking from 10 m/s to a stop at full brake (-4.95 m/s^2) exceeds Bench2Drive's -4.05 limit.
    assert res.terms["comfort"][0, 1].any() and not res.terms["comfort"][0, 0].any()
    assert res.terms["ttc"][0, 0].any() and not res.terms["ttc"][0, 1].any()
    assert not res.terms["drivable"].any()  # straight down the lane
    # Veering 6 m to the left over 20 m leaves the single 3.5 m lane.
    off = _rollouts([scene], [10.0], lateral=6.0)
    assert Reward({"terms": {"drivable": -1.0}})(off).terms["drivable"][0, 0, -1] == 1.0
    # Without lanes the term says what is missing.
    with pytest.raises(RewardError, match="'drivable' needs the lanes"):
        Reward({"terms": {"drivable": -1.0}})(_rollouts([_scene()], [5.0]))
    # Without a route, progress is measured along the expert's trajectory.
    plain = _rollouts([_scene(speed=5.0)], [5.0])
    assert Reward({"terms": {"progress": 1.0}})(plain).terms["progress"].sum() > 8.0


USER_TERMS = """
import numpy as np


def left_of_start(rollouts, weight_per_m=1.0):
    '''1 per metre the ego is to the left of where it started (in its starting frame).'''
    ego = rollouts.batch.ego
    dx = rollouts.traj[..., 0] - ego[:, None, None, 0]
    dy = rollouts.traj[..., 1] - ego[:, None, None, 1]
    yaw = ego[:, None, None, 2]
    return weight_per_m * (-np.sin(yaw) * dx + np.cos(yaw) * dy)


def wrong_shape(rollouts):
    return np.zeros(3)


def makes_nan(rollouts):
    out = np.zeros(rollouts.traj.shape[:3])
    out[0, 1, 4] = np.nan
    return out
"""


def test_a_user_term_by_import_path_changes_the_rewards(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_t5.py").write_text(textwrap.dedent(USER_TERMS))
    monkeypatch.syspath_prepend(str(tmp_path))
    r = _rollouts([_scene(speed=6.0)] * 2, [6.0], lateral=0.0)
    r_left = _rollouts([_scene(speed=6.0)] * 2, [6.0], lateral=4.0)
    base = Reward()
    custom = Reward({"terms": {"distance": -1.0, "collision": -1.0, "my_rewards_t5:left_of_start": -0.5},
                     "params": {"my_rewards_t5:left_of_start": {"weight_per_m": 2.0}}})
    # Straight ahead the custom term is 0: the same rewards as the default.
    np.testing.assert_allclose(custom(r).returns, base(r).returns, atol=1e-12)
    # Drifting left costs -0.5 * 2 per metre on top of the distance term.
    res = custom(r_left)
    left = r_left.traj[..., 1]
    np.testing.assert_allclose(res.per_step, base(r_left).per_step - 1.0 * left)
    assert (res.returns < base(r_left).returns).all()
    with pytest.raises(RewardError, match="'my_rewards_t5:wrong_shape' returned shape"):
        Reward({"terms": {"my_rewards_t5:wrong_shape": 1.0}})(r)
    with pytest.raises(RewardError, match=r"'my_rewards_t5:makes_nan' returned 1 NaN.*candidate 1, step 4"):
        Reward({"terms": {"my_rewards_t5:makes_nan": 1.0}})(Rollouts(r.batch, np.repeat(r.traj, 2, 1)))
    with pytest.raises(RewardError, match="cannot import reward term 'my_rewards_t5:nope'"):
        Reward({"terms": {"my_rewards_t5:nope": 1.0}})


def test_registered_terms_and_config_errors():
    @register_reward("speed_bonus")
    def speed_bonus(rollouts, scale=1.0):
        return scale * rollouts.traj[..., 3]

    try:
        r = _rollouts([_scene(speed=5.0)], [5.0, 0.0])
        cfg = {"terms": {"speed_bonus": 1.0}, "params": {"speed_bonus": {"scale": 0.5}}, "gamma": 1.0}
        res = Reward(cfg)(r)
        np.testing.assert_allclose(res.returns, 0.5 * r.traj[..., 3].sum(-1))
    finally:
        REWARD_TERMS.pop("speed_bonus")
    with pytest.raises(RewardError, match="unknown reward term 'speed_bonus'; registered: collision"):
        Reward({"terms": {"speed_bonus": 1.0}})
    with pytest.raises(RewardError, match="params given for terms not in the reward"):
        Reward({"terms": {"distance": -1.0}, "params": {"ttc": {}}})
    with pytest.raises(RewardError, match="gamma must be in"):
        Reward({"gamma": 1.5})
    with pytest.raises(RewardError, match="unknown reward config keys"):
        RewardConfig.from_dict({"term": {}})
    with pytest.raises(RewardError, match="'collision' failed"):
        Reward({"terms": {"collision": -1.0}, "params": {"collision": {"valu": 3}}})(r)
    assert Reward().config.terms == {"distance": -1.0, "collision": -1.0} and Reward().config.gamma == 0.9
    assert T.shape == (10,)
