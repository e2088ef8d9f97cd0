"""RLlib smoke test: one PPO iteration on the driving environment (flattened observations).

With num_env_runners=0 RLlib steps the environment in this (the driver) process; libsumo runs one
simulation per process, which is fine as long as no other environment of this process is in use.
"""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.rllib")
pytest.importorskip("torch")

from gymnasium.wrappers import FlattenObservation  # noqa: E402
from ray import tune  # noqa: E402
from ray.rllib.algorithms.ppo import PPOConfig  # noqa: E402
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig  # noqa: E402

ENV_NAME = "takeover_flat_urban_grid"
ENV_CONFIG = {
    "map": "urban_grid",
    "camera": {"enabled": False},
    "bev": {"enabled": False},
    "traffic": {"vehicles": 3, "pedestrians": 0},
    "random_route_length": (80.0, 150.0),
    "max_ticks": 150,
}


def _make_flat_env(env_config):
    from envs.driving_env import DrivingEnv

    return FlattenObservation(DrivingEnv(dict(env_config)))


@pytest.fixture
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_ppo_one_iteration(ray_session):
    tune.register_env(ENV_NAME, _make_flat_env)
    config = (
        PPOConfig()
        .environment(ENV_NAME, env_config=ENV_CONFIG)
        .framework("torch")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1, rollout_fragment_length=200)
        .learners(num_learners=0)
        .training(train_batch_size_per_learner=200, minibatch_size=64, num_epochs=1, lr=1e-4)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[32, 32]))
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        result = algo.train()
    finally:
        algo.stop()
    runners = result["env_runners"]
    assert runners["num_env_steps_sampled_lifetime"] >= 200
    assert result["num_env_steps_sampled_lifetime"] >= 200
    # max_ticks=150 < 200 sampled steps: at least one episode ended (truncated) and was reported.
    assert runners["num_episodes_lifetime"] >= 1
    assert 1 <= runners["episode_len_max"] <= ENV_CONFIG["max_ticks"]
    learner = result["learners"]["default_policy"]
    for key in ("policy_loss", "vf_loss", "entropy"):
        assert key in learner
