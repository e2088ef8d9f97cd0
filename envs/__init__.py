"""Driving environments: scene types, simulator backends, maps, routes, sensors, infractions.

Importing `envs` registers the gymnasium ids (`gymnasium.make("takeover/UrbanGrid-v0")`, ...).
"""

import gymnasium as gym

_ENTRY = "envs.driving_env:DrivingEnv"
GYM_IDS = {
    "takeover/Sumo-v0": {},  # pass config=... or keyword overrides (map=..., routes=...)
    "takeover/UrbanGrid-v0": {"map": "urban_grid"},
    "takeover/Highway-v0": {"map": "highway"},
    "takeover/Rural-v0": {"map": "rural"},
}

for _id, _kwargs in GYM_IDS.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_ENTRY, kwargs=dict(_kwargs), max_episode_steps=None)
