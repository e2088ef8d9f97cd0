"""Scenario Dreaming throughput: candidate rollouts per second on one core, and the same computation
with shapely polygons (the way NAVSIM's scorer checks collisions). Prints JSON.

A batch is B scenes x G candidates (default 32 x 8 = 256, TakeVLA's batch and group size), H = 10 steps
of 0.2 s. Each scene has N agents (20 and 100 by default) driving straight at constant speed, placed
uniformly in a 200 m x 200 m square around the ego (a busy town block); the candidates are the policy's
output format (20-point path, 10 speed waypoints) with random lateral drift and speed. Measured per
batch, after warm-up, median of `--repeats` batches:

- `pipeline`: rollout (controller twin + bicycle) + box overlaps + the default reward (-distance -
  collision, gamma 0.9) — the number GRPO sees;
- `scene_batch_ms`: padding the B scenes into a batch (`DreamBatch.stack`, which also computes the
  agents' sweep bounds), done once per batch in the data path and not counted in the pipeline;
- `rollout`, `overlaps`: the two kernels alone; `overlaps_naive`: a serial Numba loop over every agent
  at every step (no pruning), for reference;
- `shapely_pipeline`: the same rollouts, collisions from shapely polygons (one STRtree of agent polygons
  per scene and step, queried with each candidate's ego polygon, predicate "intersects"), the distance
  term in NumPy. `overlap_agreement` is the share of (scene, candidate, step) where the two collision
  results agree.

    python benchmarks/pseudo_sim.py [--scenes 32] [--group 8] [--agents 20 100] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np
import shapely
from numba import njit

from envs import dreaming as dr
from envs.geometry import boxes_corners, overlap_scalars
from envs.rewards import Reward, Rollouts

T = 0.2 * np.arange(1, 11)


def make_batch(rng: np.random.Generator, scenes: int, group: int, agents: int):
    out = []
    for _ in range(scenes):
        fut = np.empty((agents, 10, 5))
        for a in range(agents):
            p = rng.uniform(-100.0, 100.0, 2)
            yaw, v = rng.uniform(-math.pi, math.pi), rng.uniform(0.0, 12.0)
            hl, hw = (2.4, 1.0) if rng.uniform() < 0.8 else (0.3, 0.3)  # cars and pedestrians
            fut[a] = np.column_stack([p[0] + math.cos(yaw) * v * T, p[1] + math.sin(yaw) * v * T,
                                      np.full(10, yaw), np.full(10, hl), np.full(10, hw)])
        v0 = rng.uniform(0.0, 12.0)
        out.append(dr.DreamScene(
            ego=np.array([0.0, 0.0, 0.0, v0]), ego_extent=np.array([2.45, 1.06]), agent_box=fut[:, 0],
            agent_kind=np.zeros(agents, np.int8), agent_future=fut,
            expert_future=np.column_stack([v0 * T, np.zeros(10), np.zeros(10)]),
        ))
    batch = dr.DreamBatch.stack(out)
    s = np.arange(1.0, 21.0)
    drift = rng.normal(0.0, 2.0, (scenes, group, 1))
    paths = np.stack([np.broadcast_to(s, (scenes, group, 20)), drift * (s / 20.0) ** 2], -1)
    speed = rng.uniform(0.0, 14.0, (scenes, group, 1))
    t = 0.25 * np.arange(1, 11)
    wps = np.stack([speed * t, drift * (speed * t / 20.0) ** 2], -1)
    return batch, np.ascontiguousarray(paths), np.ascontiguousarray(wps)


@njit(cache=True)
def overlaps_naive(traj, extent, fut, n_agents):  # pragma: no cover - numba
    b_n, g_n, h_n = traj.shape[0], traj.shape[1], traj.shape[2]
    out = np.zeros((b_n, g_n, h_n), np.bool_)
    for b in range(b_n):
        for g in range(g_n):
            for h in range(h_n):
                for a in range(n_agents[b]):
                    if fut[b, a, h, 0] == fut[b, a, h, 0] and overlap_scalars(
                        traj[b, g, h, 0], traj[b, g, h, 1], traj[b, g, h, 2], extent[b, 0], extent[b, 1],
                        fut[b, a, h, 0], fut[b, a, h, 1], fut[b, a, h, 2], fut[b, a, h, 3], fut[b, a, h, 4],
                    ):
                        out[b, g, h] = True
                        break
    return out


def shapely_overlaps(batch: dr.DreamBatch, traj: np.ndarray) -> np.ndarray:
    b_n, g_n, h_n, _ = traj.shape
    out = np.zeros((b_n, g_n, h_n), bool)
    for b in range(b_n):
        n = int(batch.n_agents[b])
        for h in range(h_n):
            boxes = batch.agent_future[b, :n, h]
            boxes = boxes[np.isfinite(boxes).all(axis=1)]
            tree = shapely.STRtree(shapely.polygons(boxes_corners(boxes)))
            ego = np.column_stack([traj[b, :, h, :3], np.tile(batch.ego_extent[b], (g_n, 1))])
            ego_polys = shapely.polygons(boxes_corners(ego))
            for g in range(g_n):
                out[b, g, h] = len(tree.query(ego_polys[g], predicate="intersects")) > 0
    return out


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(scenes: int, group: int, agents: int, repeats: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    batch, paths, wps = make_batch(rng, scenes, group, agents)
    reward = Reward()
    n = scenes * group
    traj = dr.rollout(batch, paths, wps)
    ours = dr.overlaps(batch, traj)
    naive = overlaps_naive(traj, batch.ego_extent, batch.agent_future, batch.n_agents)
    exact = shapely_overlaps(batch, traj)

    def pipeline():
        reward(Rollouts(batch, dr.rollout(batch, paths, wps)))

    def shapely_pipeline():
        tr = dr.rollout(batch, paths, wps)
        col = 30.0 * shapely_overlaps(batch, tr)
        exp = batch.expert_future[:, None]
        dist = np.hypot(tr[..., 0] - exp[..., 0], tr[..., 1] - exp[..., 1])
        (-dist - col) @ (0.9 ** np.arange(tr.shape[2]))

    t_pipe = timed(pipeline, repeats)
    t_roll = timed(lambda: dr.rollout(batch, paths, wps), repeats)
    t_over = timed(lambda: dr.overlaps(batch, traj), repeats)
    fut, ext, n_ag = batch.agent_future, batch.ego_extent, batch.n_agents
    t_naive = timed(lambda: overlaps_naive(traj, ext, fut, n_ag), repeats)
    t_shp = timed(shapely_pipeline, max(1, repeats // 3))
    scenes_list = [dr.DreamScene(batch.ego[i], batch.ego_extent[i], batch.agent_future[i, :, 0],
                                 batch.agent_kind[i], batch.agent_future[i], batch.expert_future[i])
                   for i in range(scenes)]
    t_stack = timed(lambda: dr.DreamBatch.stack(scenes_list), repeats)
    return {
        "agents": agents,
        "batch": [scenes, group, int(batch.horizon)],
        "pipeline_rollouts_per_s": round(n / t_pipe),
        "rollout_only_per_s": round(n / t_roll),
        "overlaps_only_per_s": round(n / t_over),
        "overlaps_naive_per_s": round(n / t_naive),
        "shapely_pipeline_rollouts_per_s": round(n / t_shp),
        "speedup_vs_shapely": round(t_shp / t_pipe, 1),
        "scene_batch_ms": round(1e3 * t_stack, 3),  # DreamBatch.stack of the B scenes (data path, once)
        "overlap_share": round(float(ours.mean()), 4),
        "overlap_agreement_shapely": float((ours == exact).mean()),
        "overlap_agreement_naive": float((ours == naive).mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--agents", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    dr.warm_up()
    warm = time.perf_counter() - t0
    results = [run(args.scenes, args.group, a, args.repeats, args.seed) for a in args.agents]
    print(json.dumps({
        "benchmark": "pseudo_sim",
        "warm_up_s": round(warm, 2),
        "results": results,
        "threads": 1,  # every kernel is serial Numba
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }, indent=1))


if __name__ == "__main__":
    main()
