"""Expert decision time per tick (`ExpertAgent.act` only, simulator excluded) on a Bench2Drive route in
Town04 with background traffic. Prints JSON with the median / p95 / max in milliseconds.

    python benchmarks/expert_decision_time.py [--route 24785] [--vehicles 40] [--steps 1500]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from envs.driving_env import DrivingEnv, EnvConfig
from envs.sumo_backend import TrafficConfig
from policies.base import make_agent

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_MAP = SHARED / "carla" / "maps" / "Town04.xodr"
DEFAULT_ROUTES = SHARED / "routes" / "bench2drive220_town01-05.xml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--map", default=str(DEFAULT_MAP))
    ap.add_argument("--routes", default=str(DEFAULT_ROUTES))
    ap.add_argument("--route", default="24785")
    ap.add_argument("--vehicles", type=int, default=40)
    ap.add_argument("--pedestrians", type=int, default=10)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()

    traffic = TrafficConfig(vehicles=args.vehicles, pedestrians=args.pedestrians)
    cfg = EnvConfig(map=args.map, routes=args.routes, route_ids=[args.route], traffic=traffic,
                    max_ticks=10**6)
    cfg.camera.enabled = False
    env = DrivingEnv(cfg)
    env.reset(seed=0, options={"route_id": args.route})
    agent = make_agent("expert")
    agent.reset(env.route)
    times: list[float] = []
    n_agents: list[int] = []
    for k in range(args.steps + args.warmup):
        obs, scene = env.observation(), env.scene
        t = time.perf_counter()
        out = agent.act(obs, scene)
        dt = time.perf_counter() - t
        if k >= args.warmup:  # the first calls compile Numba kernels
            times.append(dt)
            n_agents.append(len(scene.agents))
        _, _, term, trunc, info = env.step(out.control.as_array())
        if term or trunc:
            break
    ms = np.asarray(times) * 1e3
    env.close()
    print(json.dumps({
        "benchmark": "expert_decision_time",
        "route": args.route,
        "map": Path(args.map).name,
        "ticks_timed": len(ms),
        "mean_agents_in_scene": round(float(np.mean(n_agents)), 1) if n_agents else 0,
        "median_ms": round(float(np.median(ms)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "max_ms": round(float(ms.max()), 3),
        "status": info.get("status"),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
