"""Dataset collection jobs behind `takeover collect expert|takeover`.

Both write with `envs.dataset.DatasetWriter` (Parquet shards, atomic per shard) into a folder that is
appended to: a segment id already there is skipped, so an interrupted job is resumed by running it again.
Routes come from a route file (grouped by town, one SUMO network per group) or are random.

- `collect_expert`: a privileged agent drives each route; a frame is recorded every 20 / hz ticks with
  the agent's path and speed waypoints, target speed, hazards, cause and language, and each frame's future
  boxes and driven trajectory (2 s at 5 Hz) are filled from the ticks driven after it; bucket tags come
  from `envs.buckets`. One route = one segment (`trigger="expert"`).
- `collect_takeover`: a policy drives with the expert in shadow mode (`envs.takeover.TakeoverCollector`);
  every takeover is one segment.

Language labels are drawn by `policies.language.LabelGenerator`, seeded per episode (job seed + route
index) and keyed by tick, so a rerun writes the same text: SimLingo-style commentary of the expert's state
on expert frames, TakeVLA's enhanced wording on takeover and pre-takeover frames. An agent without an
`ExpertState` keeps its own `language`.

A route whose simulator fails is logged and skipped; the shards written before it stay, and the
writer is closed (its last shard flushed) however the job ends.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs.perturbation import ControlPerturbation, PerturbationConfig
from envs.segments import (
    Frame,
    SceneSnapshot,
    TakeoverSegment,
    driven_future,
    fill_agent_futures,
    future_ticks,
    planned_future,
    scene_frame,
    snapshot,
)

TICK_DT = 0.05


class Progress:
    """A progress bar over ticks: tqdm when installed, else a line every `every_s` seconds."""

    def __init__(self, desc: str, log: Callable[[str], None], every_s: float = 10.0) -> None:
        self.desc, self.log, self.every_s = desc, log, every_s
        self.n = 0
        self._last = time.time()
        try:
            from tqdm import tqdm

            self._bar = tqdm(desc=desc, unit="tick")
        except ImportError:
            self._bar = None

    def update(self, n: int = 1, **status: object) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix(status, refresh=False)
        elif time.time() - self._last >= self.every_s:
            self._last = time.time()
            extra = "  ".join(f"{k} {v}" for k, v in status.items())
            self.log(f"    {self.desc}: tick {self.n}  {extra}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def default_expert_agent() -> str:
    """ "expert" when registered (policies.expert), else "lane_follow"."""
    from policies.base import AGENTS

    with contextlib.suppress(ImportError):
        import policies.expert  # registers "expert"
    import policies.simple_agent  # noqa: F401

    return "expert" if "expert" in AGENTS else "lane_follow"


@dataclass
class CollectJob:
    """What to collect and where. `agent` is the expert (the driver for expert data, the shadow expert
    for takeovers); `policy`, `triggers`, `t_pre`, `t_take` and `hold_speed` are used by takeover
    collection only."""

    map: str
    out: Path
    routes: str | None = None
    route_ids: list[str] | None = None
    agent: str | None = None  # None = default_expert_agent()
    hz: int = 4
    num_routes: int = 2
    seed: int = 0
    vehicles: int = 20
    pedestrians: int = 5
    max_ticks: int = 4000
    shard_frames: int = 512
    image_format: str = "png"
    camera_size: tuple[int, int] = (256, 128)
    policy: str | None = None
    triggers: list[str] | None = None  # None = TakeoverConfig's default (follow, collision, restart)
    t_pre: int = 20
    t_take: int = 50
    hold_speed: float = 0.5  # envs.takeover.TakeoverConfig.hold_speed
    perturbation: PerturbationConfig | None = None  # expert collection only: DART-style noise injection
    log: Callable[[str], None] = field(default=print)


@dataclass
class Episode:
    env: Any  # envs.driving_env.DrivingEnv, already built for the episode's map
    map: str
    route_id: str  # the route file's id, or "random-<seed>"
    options: dict  # env.reset options
    seed: int


def episodes(job: CollectJob) -> Iterator[Episode]:
    """The job's episodes in order, one DrivingEnv per map group (closed when its group is done)."""
    from envs.driving_env import DrivingEnv, EnvConfig
    from envs.sumo_backend import TrafficConfig
    from takeover.drive import DriveJob, plan_jobs

    drive_job = DriveJob(
        map=job.map, out=job.out, routes=job.routes, route_ids=job.route_ids,
        num_random_routes=job.num_routes, log=job.log,
    )
    for map_path, specs in plan_jobs(drive_job):
        cfg = EnvConfig(
            map=map_path,
            routes=job.routes if specs else None,
            route_ids=[s.route_id for s in specs] if specs else None,
            traffic=TrafficConfig(vehicles=job.vehicles, pedestrians=job.pedestrians),
            max_ticks=job.max_ticks,
        )
        cfg.camera.enabled = True
        cfg.camera.width, cfg.camera.height = job.camera_size
        env = DrivingEnv(cfg)
        try:
            n = len(specs) if specs is not None else job.num_routes
            for k in range(n):
                seed = job.seed + k
                rid = specs[k].route_id if specs else f"random-{seed}"
                yield Episode(env, str(map_path), rid, {"route_id": rid} if specs else {}, seed)
        finally:
            env.close()


# ------------------------------------------------------------------------------- expert recording
def frame_from_tick(env, out, route_id: str, town: str, language: str | None = None) -> Frame:
    """A Frame for the current tick of `env` with the labels of agent output `out` (futures empty);
    `language` replaces the agent's own text when given."""
    exp = out.expert
    hazards = sorted(k for k, v in (exp.hazards if exp else {}).items() if v)
    if exp is not None and exp.lane_change:
        hazards.append(f"lane_change_{exp.lane_change}")
    target_speed = exp.target_speed if exp is not None else out.info.get("target_speed", float("nan"))
    return scene_frame(
        env.scene, env.observation(), route_id, town,
        language=out.language if language is None else language,
        path=None if out.path is None else np.asarray(out.path, np.float64),
        speed_waypoints=None if out.speed_waypoints is None else np.asarray(out.speed_waypoints, np.float64),
        target_speed=float(target_speed) if target_speed is not None else float("nan"),
        control=out.control.as_array(),
        driver="expert",
        hazards=hazards,
        cause=exp.cause.kind if exp is not None and exp.cause is not None else "",
    )


def record_expert_route(
    env, agent, options: dict, seed: int, hz: int, progress: Progress | None = None,
    perturbation: PerturbationConfig | None = None,
):
    """Drive one episode with `agent`; returns (frames at `hz`, env record, perturbation summary or None).
    Buckets are tagged; language is the commentary of the agent's expert state (phrasing drawn with `seed`
    and the tick). With `perturbation`, the executed control is perturbed in short windows
    (`envs.perturbation`) while the frames keep the agent's labels; frames in or shortly after a window
    get the "recovery" bucket, and frames whose 2 s future meets a window take the agent's planned
    trajectory as `expert_future` (the driven one is not the expert's)."""
    from envs.buckets import RECOVERY, tag_frames
    from policies.language import LabelGenerator

    labels = LabelGenerator(seed)
    perturb = None
    if perturbation is not None:  # its own stream, so the labels' phrasing does not change with it
        perturb = ControlPerturbation(perturbation, np.random.default_rng([seed, 7919]), TICK_DT)
    every = max(round(1.0 / (hz * TICK_DT)), 1)
    env.reset(seed=seed, options=options)
    agent.reset(env.route)
    rid, town = env.route.route_id, env.route.town or ""
    frames: list[Frame] = []
    snapshots: dict[int, SceneSnapshot] = {}
    while True:
        scene = env.scene
        tick = int(scene.tick)
        snapshots[tick] = snapshot(scene)
        out = agent.act(env.observation(), scene if agent.privileged else None)
        if tick % every == 0:
            text = None if out.expert is None else labels.commentary(out.expert, tick)
            frames.append(frame_from_tick(env, out, rid, town, text))
        action = out.control.as_array()
        if perturb is not None:
            action = perturb.apply(tick, action, float(scene.ego.speed))
        _, _, terminated, truncated, info = env.step(action)
        if progress is not None:
            progress.update(1, completion=f"{info['completion']:.1f}%", frames=len(frames))
        if terminated or truncated:
            snapshots[int(env.scene.tick)] = snapshot(env.scene)
            break
    windows = [] if perturb is None else perturb.windows
    for f in frames:  # the expert drove: its future trajectory is the one driven, unless perturbed
        fill_agent_futures(f, snapshots)
        horizon = int(future_ticks(f.tick)[-1])
        planned = None
        if any(w.start <= horizon and f.tick < w.end for w in windows):
            planned = planned_future(f, f.speed_waypoints)
        f.expert_future = driven_future(f, snapshots) if planned is None else planned
    tag_frames(frames)
    if perturb is not None:
        for f in frames:
            if perturb.in_recovery(f.tick):
                f.buckets = [*f.buckets, RECOVERY]
    return frames, env.record(), None if perturb is None else perturb.summary()


def collect_expert(job: CollectJob) -> dict:
    """Drive the job's routes with a privileged agent and append one segment per route to `job.out`."""
    from envs.dataset import DatasetWriter
    from envs.sumo_backend import SimulatorError
    from policies.base import make_agent

    agent_name = job.agent or default_expert_agent()
    agent = make_agent(agent_name)
    if not getattr(agent, "privileged", False):
        raise ValueError(f"agent {agent_name!r} is not privileged; expert data needs a privileged agent")
    writer = DatasetWriter(job.out, kind="expert", shard_frames=job.shard_frames,
                           image_format=job.image_format)
    stats = {"routes": 0, "skipped": 0, "failed": 0, "frames": 0}
    try:
        for ep in episodes(job):
            rid = ep.route_id
            if rid in writer.segment_ids:
                stats["skipped"] += 1
                job.log(f"{rid}: already in {job.out}, skipped")
                continue
            progress = Progress(rid, job.log)
            try:
                frames, rec, perturbed = record_expert_route(
                    ep.env, agent, ep.options, ep.seed, job.hz, progress, job.perturbation
                )
            except SimulatorError as exc:
                stats["failed"] += 1
                job.log(f"{rid}: simulation failed: {exc}")
                continue
            finally:
                progress.close()
            for f in frames:
                f.route_id = rid
            info = {
                "agent": agent_name,
                "map": ep.map,
                "seed": ep.seed,
                "hz": job.hz,
                "status": rec.get("status"),
                "completion": rec["scores"]["score_route"],
                "driving_score": rec["scores"]["score_composed"],
            }
            if perturbed is not None:
                info["perturbation"] = perturbed
            town = frames[0].town if frames else ""
            writer.add_segment(
                TakeoverSegment(rid, "expert", 0, rid, town, frames, np.zeros(len(frames), bool), info)
            )
            stats["routes"] += 1
            stats["frames"] += len(frames)
            job.log(
                f"{rid}: {len(frames)} frames, {rec.get('status')}, completion "
                f"{rec['scores']['score_route']:.1f}%"
            )
    finally:
        writer.close()
    job.log(f"expert data: {stats['routes']} routes, {stats['frames']} frames -> {job.out}")
    return stats


# ----------------------------------------------------------------------------- takeover recording
def collect_takeover(job: CollectJob) -> dict:
    """Drive `job.policy` with the shadow expert on the job's routes and append every takeover segment
    to `job.out` (ids end in "-seed<seed>", so a rerun skips those already written)."""
    from envs.buckets import tag_frames
    from envs.dataset import DatasetWriter
    from envs.sumo_backend import SimulatorError
    from envs.takeover import TakeoverCollector, TakeoverConfig
    from policies.base import make_agent
    from policies.language import LabelGenerator

    if not job.policy:
        raise ValueError("takeover collection needs a policy (--policy NAME or module:Class)")
    policy = make_agent(job.policy)
    expert_name = job.agent or default_expert_agent()
    expert = make_agent(expert_name)
    if not getattr(expert, "privileged", False):
        raise ValueError(f"shadow expert {expert_name!r} is not privileged; it must read the Scene")
    config = TakeoverConfig(t_pre=job.t_pre, t_take=job.t_take, hold_speed=job.hold_speed,
                            triggers=list(job.triggers) if job.triggers else TakeoverConfig().triggers)
    writer = DatasetWriter(job.out, kind="takeover", shard_frames=job.shard_frames,
                           image_format=job.image_format)
    stats: dict[str, Any] = {"routes": 0, "failed": 0, "segments": 0, "skipped": 0, "by_trigger": {}}
    def write(seg: TakeoverSegment, seed: int) -> None:
        """Called by the collector as each segment is finalised, so a simulator that dies later in the
        episode loses none of them."""
        seg.segment_id = f"{seg.segment_id}-seed{seed}"
        if not seg.frames or seg.segment_id in writer.segment_ids:
            stats["skipped"] += bool(seg.frames)
            return
        seg.info.update(policy=job.policy, expert=expert_name, seed=seed)
        if not any(f.buckets for f in seg.frames):
            tag_frames(seg.frames)
        writer.add_segment(seg)
        stats["segments"] += 1
        stats["by_trigger"][seg.trigger] = stats["by_trigger"].get(seg.trigger, 0) + 1

    try:
        for ep in episodes(job):
            progress = Progress(ep.route_id, job.log)
            collector = TakeoverCollector(
                ep.env, policy, expert, config, labeler=LabelGenerator(ep.seed).takeover_label,
                on_segment=lambda seg, seed=ep.seed: write(seg, seed),
                on_tick=lambda driver, n_seg, p=progress: p.update(1, driver=driver, segments=n_seg),
            )
            try:
                segments = collector.run_episode(ep.options, seed=ep.seed)
            except SimulatorError as exc:
                stats["failed"] += 1
                job.log(f"{ep.route_id}: simulation failed: {exc} (its finished takeovers are kept)")
                continue
            finally:
                progress.close()
            stats["routes"] += 1
            job.log(f"{ep.route_id}: {len(segments)} takeover segments "
                    f"({', '.join(s.trigger for s in segments) or '-'})")
    finally:
        writer.close()
    job.log(f"takeover data: {stats['segments']} segments {stats['by_trigger']} -> {job.out}")
    return stats
