"""`takeover drive`: closed-loop driving of routes with an agent, Bench2Drive-style records and videos.

Every finished route is written at once (`route_<id>.json`), so an interrupted run loses nothing
and `resume=True` skips what is already there. A route that fails on the project's or SUMO's side
(route off the map, simulator crash, bad scenario) gets a record with status `Failed - ...` and an
`error` message, scores 0 as in Bench2Drive, and the run goes on with the next route.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from envs.driving_env import DrivingEnv, EnvConfig
from envs.infractions import summarize
from envs.maps.build import MapError
from envs.routes import RouteFileError, RouteSpec, parse_routes, select_routes
from envs.scenarios.base import ScenarioError
from envs.sumo_backend import SimulatorError, TrafficConfig
from policies.base import make_agent


@dataclass
class DriveJob:
    map: str
    out: Path
    agent: str = "lane_follow"
    agent_kwargs: dict = field(default_factory=dict)  # keyword arguments of the agent's constructor
    routes: str | None = None
    route_ids: list[str] | None = None
    num_random_routes: int = 2
    video: bool = False
    seed: int = 0
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    max_ticks: int = 4000
    resume: bool = False
    camera_size: tuple[int, int] = (256, 128)
    log: Callable[[str], None] = print


def _map_for_town(map_arg: str, town: str) -> str | None:
    """With a directory of maps, the route's town picks `<town>.xodr`; otherwise the map must match."""
    p = Path(map_arg)
    if p.is_dir():
        cand = p / f"{town}.xodr"
        return str(cand) if cand.is_file() else None
    if p.suffix in (".xodr", ".xml") and town and not p.name.startswith(town + "."):
        return None
    return map_arg


def plan_jobs(job: DriveJob) -> list[tuple[str, list[RouteSpec] | None]]:
    """(map, route specs) groups: one SUMO network per group. `None` specs = random routes."""
    if not job.routes:
        return [(job.map, None)]
    specs = parse_routes(job.routes)
    if job.route_ids:
        specs = select_routes(specs, job.route_ids)
    groups: dict[str, list[RouteSpec]] = {}
    skipped: list[str] = []
    for spec in specs:
        m = _map_for_town(job.map, spec.town)
        if m is None:
            skipped.append(f"{spec.route_id} ({spec.town})")
            continue
        groups.setdefault(m, []).append(spec)
    if skipped:
        job.log(
            f"skipping {len(skipped)} routes whose town has no map in {job.map}: "
            f"{', '.join(skipped[:8])}{' ...' if len(skipped) > 8 else ''}"
        )
    if not groups:
        raise RouteFileError(
            f"no route in {job.routes} runs on map {job.map} (route towns: "
            f"{sorted({s.town for s in specs})}); pass the matching map or a maps folder"
        )
    return list(groups.items())


def drive(job: DriveJob) -> dict:
    job.out.mkdir(parents=True, exist_ok=True)
    agent = make_agent(job.agent, **job.agent_kwargs)
    records: list[dict] = []
    t_start = time.time()
    for map_path, specs in plan_jobs(job):
        n_routes = len(specs) if specs is not None else job.num_random_routes
        cfg = EnvConfig(
            map=map_path,
            routes=job.routes if specs else None,
            route_ids=[s.route_id for s in specs] if specs else None,
            traffic=job.traffic,
            max_ticks=job.max_ticks,
        )
        cfg.camera.width, cfg.camera.height = job.camera_size
        cfg.camera.enabled = not getattr(agent, "privileged", False) or job.video
        try:
            env = DrivingEnv(cfg, render_mode="rgb_array" if job.video else None)
        except (MapError, SimulatorError) as exc:
            if specs is None:
                raise
            # One town's map failing must not cost the other towns: its routes are recorded as failed.
            job.log(f"map {map_path} failed: {exc}")
            for spec in specs:
                rec = _failed_record(spec.route_id, "Map could not be loaded", exc, None)
                rec["scenarios"] = _spec_scenarios(spec)
                (job.out / f"route_{spec.route_id}.json").write_text(json.dumps(rec, indent=1))
                records.append(rec)
            continue
        try:
            for k in range(n_routes):
                rid = specs[k].route_id if specs else f"random-{job.seed + k}"
                path = job.out / f"route_{rid}.json"
                if job.resume and path.is_file():
                    records.append(json.loads(path.read_text()))
                    job.log(f"[{len(records)}] {rid}: already done, kept")
                    continue
                rec = _drive_one(env, agent, rid, specs is not None, job.seed + k, job)
                if specs and "scenarios" not in rec:  # a failed route still counts for its abilities
                    rec["scenarios"] = _spec_scenarios(specs[k])
                path.write_text(json.dumps(rec, indent=1))
                records.append(rec)
                job.log(
                    f"[{len(records)}] {rid}: {rec['status']}  completion "
                    f"{rec['scores']['score_route']:.1f}%  score {rec['scores']['score_composed']:.1f}"
                )
        finally:
            env.close()
    summary = summarize(records)
    summary["agent"] = job.agent
    if job.agent_kwargs:
        summary["agent_kwargs"] = job.agent_kwargs
    summary["wall_time_s"] = round(time.time() - t_start, 1)
    (job.out / "summary.json").write_text(json.dumps(summary, indent=1))
    _summary_figure(records, job.out / "summary.png")
    job.log(
        f"driving score {summary['driving_score']:.2f}  success rate {summary['success_rate']:.2f}  "
        f"over {len(records)} routes{_abilities_text(summary)} -> {job.out}"
    )
    return summary


def _abilities_text(summary: dict) -> str:
    """'  abilities: Merging 50.0 ... mean 62.5' when the summary has ability scores, else ''."""
    rates = summary.get("abilities")
    if not rates:
        return ""
    parts = [f"{name} {'-' if v is None else f'{v:.1f}'}" for name, v in rates.items() if name != "mean"]
    mean = rates.get("mean")
    return f"  abilities: {', '.join(parts)}, mean {'-' if mean is None else f'{mean:.1f}'}"


def _spec_scenarios(spec: RouteSpec) -> list[dict]:
    """Scenario entries (as DrivingEnv.record() writes them) for a route that failed before running."""
    from envs.scenarios.base import SCENARIOS, load_library

    load_library()
    return [{"name": sc.name, "type": sc.type, "implemented": sc.type in SCENARIOS, "triggered": False,
             "trigger_tick": None, "notes": []} for sc in spec.scenarios]


def _drive_one(env: DrivingEnv, agent, rid: str, from_file: bool, seed: int, job: DriveJob) -> dict:
    options = {"route_id": rid} if from_file else {}
    frames: list[np.ndarray] = []
    trajectory: list[tuple[float, float, float]] = []
    try:
        env.reset(seed=seed, options=options)
        agent.reset(env.route)
        if job.video:
            frames.append(env.render())
        last_log = time.time()
        while True:
            out = agent.act(env.observation(), env.scene if agent.privileged else None)
            _, _, terminated, truncated, info = env.step(out.control.as_array())
            ego = env.scene.ego
            trajectory.append((ego.x, ego.y, ego.speed))
            if job.video and env.scene.tick % 2 == 0:
                frames.append(env.render())
            if time.time() - last_log > 10.0:
                job.log(f"    {rid}: tick {info['tick']}, completion {info['completion']:.1f}%")
                last_log = time.time()
            if terminated or truncated:
                break
        rec = env.record()
        if not from_file:  # random routes are named by the job (stable across --resume)
            rec["generated_route_id"], rec["route_id"] = rec["route_id"], rid
    except (SimulatorError, RouteFileError, ScenarioError) as exc:
        kind = "Simulation crashed" if isinstance(exc, SimulatorError) else "Route could not be set up"
        rec = _failed_record(rid, kind, exc, env)
    rec["seed"] = seed
    rec["agent"] = job.agent
    if trajectory:
        rec["trajectory_file"] = f"route_{rid}_trajectory.npy"
        np.save(job.out / rec["trajectory_file"], np.asarray(trajectory, np.float32))
        _trajectory_figure(env, np.asarray(trajectory), rec, job.out / f"route_{rid}.png")
    if frames:
        from envs.render import write_video

        rec["video"] = Path(write_video(frames, job.out / f"route_{rid}.mp4", fps=10)).name
    return rec


def _failed_record(rid: str, kind: str, exc: Exception, env: DrivingEnv | None) -> dict:
    rec = {
        "route_id": rid,
        "status": f"Failed - {kind}",
        "error": f"{type(exc).__name__}: {exc}",
        "scores": {"score_route": 0.0, "score_penalty": 1.0, "score_composed": 0.0},
        "infractions": {},
    }
    if env is not None and env.tracker is not None and env.route is not None and env.route.route_id == rid:
        partial = env.tracker.record()
        rec["partial"] = {
            "completion": partial["scores"]["score_route"],
            "infractions": partial["infractions"],
        }
    return rec


def _trajectory_figure(env: DrivingEnv, traj: np.ndarray, rec: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    route = env.route
    lo = np.minimum(route.points.min(0), traj[:, :2].min(0)) - 40
    hi = np.maximum(route.points.max(0), traj[:, :2].max(0)) + 40
    fig, ax = plt.subplots(figsize=(6, 6), dpi=110)
    lanes = env.lanes
    for i in np.flatnonzero(lanes.drivable):
        pl = lanes.polyline(i)
        if np.any((pl >= lo).all(1) & (pl <= hi).all(1)):
            ax.plot(pl[:, 0], pl[:, 1], color="0.8", lw=0.6, zorder=1)
    ax.plot(
        route.points[:, 0], route.points[:, 1], color="tab:blue", lw=2, alpha=0.4, label="route", zorder=2
    )
    sc = ax.scatter(traj[:, 0], traj[:, 1], c=traj[:, 2] * 3.6, s=2, cmap="viridis", zorder=3)
    fig.colorbar(sc, ax=ax, label="ego speed (km/h)", shrink=0.7)
    for item in rec.get("infraction_details", []):
        if item.get("type") == "min_speed_infraction" or not item.get("location"):
            continue
        loc = item["location"]
        ax.scatter([loc[0]], [loc[1]], marker="x", s=60, color="red", zorder=4)
        ax.annotate(item["type"], (loc[0], loc[1]), fontsize=7, color="red")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.set_title(
        f"route {rec['route_id']}: {rec['status']}\nscore {rec['scores']['score_composed']:.1f}", fontsize=9
    )
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _summary_figure(records: list[dict], path: Path) -> None:
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = [str(r["route_id"]) for r in records]
    comp = [r["scores"]["score_route"] for r in records]
    score = [r["scores"]["score_composed"] for r in records]
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(ids)), 3.5), dpi=110)
    x = np.arange(len(ids))
    ax.bar(x - 0.2, comp, 0.4, label="completion %")
    ax.bar(x + 0.2, score, 0.4, label="route score")
    ax.set_xticks(x, ids, rotation=90, fontsize=6)
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
