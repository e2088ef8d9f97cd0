"""Env steps/s on Town04 with ~100 background vehicles, (a) without rendering, (b) with a 256x128 front
camera, next to raw SUMO steps/s with the same traffic in the same run. Prints JSON.

    python benchmarks/env_throughput.py [--map PATH] [--vehicles 100] [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

from envs.driving_env import DrivingEnv, EnvConfig
from envs.sumo_backend import TrafficConfig

DEFAULT_MAP = Path(__file__).resolve().parents[2] / "shared" / "data" / "carla" / "maps" / "Town04.xodr"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _make(map_path: str, vehicles: int, camera: bool) -> DrivingEnv:
    cfg = EnvConfig(
        map=map_path,
        traffic=TrafficConfig(vehicles=vehicles, pedestrians=0, spawn_radius=400.0, despawn_radius=600.0),
        random_route_length=(1500.0, 3000.0),
        max_ticks=10**6,
    )
    cfg.camera.enabled = camera
    return DrivingEnv(cfg)


def _run_env(env: DrivingEnv, steps: int, seed: int) -> tuple[float, int, int]:
    """Steps/s over `step()` calls only; episode resets (the fixed action leaves the route) are not timed."""
    env.reset(seed=seed)
    action = np.array([0.3, 0.0, 0.0], np.float32)
    for _ in range(50):  # warm-up: JIT, traffic insertion
        env.step(action)
    n_agents = []
    resets = 0
    elapsed = 0.0
    for k in range(steps):
        t = time.perf_counter()
        _, _, term, trunc, _ = env.step(action)
        elapsed += time.perf_counter() - t
        if k % 100 == 0:
            n_agents.append(len(env.scene.agents))
        if term or trunc:
            resets += 1
            env.reset(seed=seed + k)
    return steps / elapsed, int(np.mean(n_agents)), resets


def _run_raw(env: DrivingEnv, steps: int, seed: int) -> tuple[float, int]:
    """Raw SUMO with the same network and traffic: plain simulationStep calls, nothing else."""
    env.reset(seed=seed)
    ls = env.backend.ls
    for _ in range(50):
        ls.simulationStep()
    n = ls.vehicle.getIDCount()
    t = time.perf_counter()
    for _ in range(steps):
        ls.simulationStep()
    return steps / (time.perf_counter() - t), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--map", default=str(DEFAULT_MAP))
    ap.add_argument("--vehicles", type=int, default=100)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not Path(args.map).exists() and not args.map.isidentifier():
        raise SystemExit(f"map not found: {args.map} (pass --map)")
    base_rss = _rss_mb()
    env = _make(args.map, args.vehicles, camera=False)
    raw, raw_vehicles = _run_raw(env, args.steps, args.seed)
    no_render, agents_a, resets_a = _run_env(env, args.steps, args.seed)
    rss_a = _rss_mb()
    env.close()
    env = _make(args.map, args.vehicles, camera=True)
    cam, agents_b, resets_b = _run_env(env, args.steps, args.seed)
    rss_b = _rss_mb()
    env.close()
    print(
        json.dumps(
            {
                "map": Path(args.map).name,
                "background_vehicles_target": args.vehicles,
                "vehicles_in_sumo_raw_run": raw_vehicles,
                "mean_agents_in_scene": {"no_render": agents_a, "camera": agents_b},
                "steps": args.steps,
        "episode_resets_untimed": {"no_render": resets_a, "camera": resets_b},
                "raw_sumo_steps_per_s": round(raw, 1),
                "env_steps_per_s_no_render": round(no_render, 1),
                "env_steps_per_s_camera_256x128": round(cam, 1),
                "no_render_fraction_of_raw": round(no_render / raw, 3),
                "targets": {"no_render_fraction_of_raw": 0.4, "camera_steps_per_s": 150},
                "peak_rss_mb": {
                    "before": round(base_rss, 1),
                    "after_no_render_env": round(rss_a, 1),
                    "after_camera_env": round(rss_b, 1),
                },
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
