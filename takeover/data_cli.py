# ruff: noqa: B008  (typer declares options as defaults)
"""`takeover collect expert|takeover` and `takeover data inspect`: record and look at datasets.

The collection jobs themselves are in `takeover.collect`; this module holds their commands and the
dataset summary and figures of `data inspect`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import typer

from envs.geometry import box_corners
from envs.perturbation import PerturbationConfig
from envs.segments import Frame, TakeoverSegment
from takeover.cli_errors import exit_now, on_sigterm
from takeover.cli_errors import fail as _fail
from takeover.collect import CollectJob, collect_expert, collect_takeover

collect_app = typer.Typer(help="Record datasets: expert driving and takeovers.", no_args_is_help=True)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)

# ---------------------------------------------------------------------------------- inspection
def summarize_dataset(root: str | Path) -> dict:
    from envs.dataset import open_dataset

    ds = open_dataset(root)
    t = ds.read_table(
        ["segment_id", "trigger", "route_id", "town", "driver", "pre_takeover", "buckets", "image_format"]
    )
    sids = t.column("segment_id").to_pylist()
    triggers = t.column("trigger").to_pylist()
    by_trigger: dict[str, int] = {}
    seen: set[str] = set()
    for sid, trig in zip(sids, triggers, strict=True):
        if sid not in seen:
            seen.add(sid)
            by_trigger[trig] = by_trigger.get(trig, 0) + 1

    def counts(values) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in values:
            out[str(v)] = out.get(str(v), 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    return {
        "path": str(root),
        "kind": ds.kind,
        "schema_version": ds.schema_version,
        "shards": len(ds.shards),
        "frames": t.num_rows,
        "segments": len(seen),
        "segments_by_trigger": by_trigger,
        "pre_takeover_frames": int(sum(t.column("pre_takeover").to_pylist())),
        "frames_by_driver": counts(t.column("driver").to_pylist()),
        "frames_with_image": int(sum(v is not None for v in t.column("image_format").to_pylist())),
        "buckets": counts(b for tags in t.column("buckets").to_pylist() for b in tags),
        "routes": counts(t.column("route_id").to_pylist()),
        "towns": counts(t.column("town").to_pylist()),
    }


def _summary_text(s: dict) -> str:
    lines = [
        f"{s['path']}: {s['kind']} dataset (schema v{s['schema_version']}), {s['shards']} shards",
        f"frames {s['frames']} ({s['frames_with_image']} with images, "
        f"{s['pre_takeover_frames']} pre-takeover)",
        f"segments {s['segments']}: " + ", ".join(f"{k} {v}" for k, v in s["segments_by_trigger"].items()),
        "drivers: " + ", ".join(f"{k} {v}" for k, v in s["frames_by_driver"].items()),
        "buckets: " + (", ".join(f"{k} {v}" for k, v in s["buckets"].items()) or "-"),
        f"routes ({len(s['routes'])}): " + ", ".join(f"{k} {v}" for k, v in list(s["routes"].items())[:12]),
    ]
    return "\n".join(lines)


_KIND_COLORS = ["tab:blue", "tab:orange", "tab:cyan", "tab:gray", "tab:red", "tab:purple", "gold"]


def draw_bev(ax, f: Frame, radius: float = 32.0) -> None:
    """Bird's-eye view of a frame's scene snapshot in the ego frame (forward = up): agents (colour by
    kind) with their future centres, the expert's future trajectory, label path / speed waypoints (green)
    and the policy's path (red)."""
    from envs.geometry import to_ego_frame

    ex, ey, eyaw = (float(v) for v in f.ego[:3])

    def up(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # ego frame (x fwd, y left) -> plot (right, up)
        p = np.asarray(p).reshape(-1, 2)
        return -p[:, 1], p[:, 0]

    for k in range(len(f.agent_ids)):
        corners = to_ego_frame(box_corners(np.asarray(f.agent_box[k], np.float64)), ex, ey, eyaw)
        col = _KIND_COLORS[int(f.agent_kind[k]) % len(_KIND_COLORS)]
        u, v = up(np.vstack([corners, corners[:1]]))
        ax.fill(u, v, color=col, alpha=0.8)
        fut = f.agent_future[k][:, :2]
        fut = fut[np.isfinite(fut).all(axis=1)]
        if len(fut):
            ax.plot(*up(to_ego_frame(fut, ex, ey, eyaw)), ".", color=col, ms=2)
    u, v = up(box_corners(np.array([0.0, 0.0, 0.0, *np.asarray(f.ego_extent, np.float64)[:2]])))
    ax.fill(np.append(u, u[0]), np.append(v, v[0]), color="black")
    ef = f.expert_future[:, :2]
    ef = ef[np.isfinite(ef).all(axis=1)]
    if len(ef):
        ax.plot(*up(to_ego_frame(ef, ex, ey, eyaw)), "-", color="tab:olive", lw=1.5, label="driven next 2 s")
    if f.path is not None:
        ax.plot(*up(f.path), "-", color="tab:green", lw=2, label="expert path")
    if f.speed_waypoints is not None:
        ax.plot(*up(f.speed_waypoints), "o", color="darkgreen", ms=3, label="expert speed wps")
    if f.policy_path is not None:
        ax.plot(*up(f.policy_path), "-", color="tab:red", lw=1.5, label="policy path")
    ax.plot(*up(np.asarray(f.target_points, float)), "x", color="purple", label="target points")
    ax.set_xlim(-radius, radius)
    ax.set_ylim(-radius / 2, radius * 1.5)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=5, loc="lower left")


def render_segment(seg: TakeoverSegment, path: Path) -> Path:
    """A figure of a few frames of a segment: camera + bird's-eye view, label text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(seg.frames)
    pre = np.flatnonzero(seg.pre_takeover)
    take = np.flatnonzero(~np.asarray(seg.pre_takeover, bool))
    picks = [int(pre[-1])] if len(pre) else []
    if len(take):
        picks += [int(take[0]), int(take[len(take) // 2])]
    picks = sorted(set(picks)) or [n // 2]
    fig, axes = plt.subplots(
        len(picks), 2, figsize=(9, 3.4 * len(picks)), squeeze=False, gridspec_kw={"width_ratios": [1.6, 1]}
    )
    for row, i in enumerate(picks):
        f = seg.frames[i]
        cam, bev = axes[row]
        if f.image is not None:
            cam.imshow(f.image)
        else:
            cam.text(0.5, 0.5, "no camera image", ha="center", va="center", transform=cam.transAxes)
        cam.axis("off")
        stage = "pre-takeover" if seg.pre_takeover[i] else seg.frames[i].driver
        cam.set_title(
            f"frame {i}/{n} tick {f.tick} [{stage}] v={f.speed:.1f} m/s target "
            f"{f.target_speed:.1f}\n{f.language[:90]}\nbuckets: {', '.join(f.buckets) or '-'}",
            fontsize=7,
        )
        draw_bev(bev, f)
    fig.suptitle(
        f"{seg.segment_id}: trigger {seg.trigger} at tick {seg.trigger_tick}, route {seg.route_id}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def inspect_dataset(
    root: str | Path, out: Path | None = None, num_figures: int = 4
) -> tuple[dict, list[Path]]:
    from envs.dataset import open_dataset

    root = Path(root)
    summary = summarize_dataset(root)  # raises DatasetError before anything is created
    out = out or root / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    ids: list[str] = list(dict.fromkeys(open_dataset(root).read_table(["segment_id"]).column(0).to_pylist()))
    want = {ids[int(k)] for k in np.linspace(0, len(ids) - 1, min(num_figures, len(ids)))} if ids else set()
    figures = []
    for seg in open_dataset(root).iter_segments():
        if seg.segment_id in want:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", seg.segment_id)
            figures.append(render_segment(seg, out / f"segment_{name}.png"))
    return summary, figures


# ------------------------------------------------------------------------------------ commands
def _run_collect(collect: Callable[[CollectJob], dict], job: CollectJob) -> None:
    """Run a collection job; bad input and a failed simulator become a one-line error (exit 2). SIGTERM
    ends the job with what it has buffered written (`exit_now`)."""
    from envs.dataset import DatasetError
    from envs.maps.build import MapError
    from envs.routes import RouteFileError
    from envs.sumo_backend import SimulatorError

    try:
        with on_sigterm(exit_now):
            collect(job)
    except (MapError, RouteFileError, SimulatorError, DatasetError, ValueError) as exc:
        _fail(str(exc))


@collect_app.command("expert")
def collect_expert_cmd(
    map: str = typer.Option(
        ..., "--map", help="Map name, OpenDRIVE / .net.xml file or a folder of TownXX.xodr."
    ),
    out: Path = typer.Option(..., "--out", help="Dataset folder (appended to; existing shards are kept)."),
    routes: str | None = typer.Option(None, "--routes", help="Route XML; without it, random routes."),
    route_id: list[str] | None = typer.Option(None, "--route-id", help="Only these route ids (repeatable)."),
    agent: str | None = typer.Option(
        None, "--agent", help="Privileged agent (default: expert, else lane_follow)."
    ),
    hz: int = typer.Option(4, "--hz", help="Recorded frames per second (the simulation runs at 20 Hz)."),
    num_routes: int = typer.Option(2, "--num-routes", help="Random routes when --routes is not given."),
    vehicles: int = typer.Option(20, "--vehicles"),
    pedestrians: int = typer.Option(5, "--pedestrians"),
    seed: int = typer.Option(0, "--seed"),
    max_ticks: int = typer.Option(4000, "--max-ticks", help="Tick cap per route."),
    shard_frames: int = typer.Option(512, "--shard-frames", help="Frames per Parquet shard (target)."),
    image_format: str = typer.Option("png", "--image-format", help="png (lossless) or jpeg."),
    perturb: bool = typer.Option(
        False, "--perturb",
        help="Noise injection (envs.perturbation): late braking and steering offsets in short windows; "
        "labels stay the expert's, so the data holds recoveries (bucket 'recovery').",
    ),
    brake_onset_p: float | None = typer.Option(
        None, "--brake-onset-p",
        help="With --perturb: probability that a braking onset is delayed "
        f"(default {PerturbationConfig.brake_onset_p}).",
    ),
    late_brake_s: tuple[float, float] | None = typer.Option(
        None, "--late-brake-s",
        help="With --perturb: range of the braking delay, seconds MIN MAX "
        f"(default {PerturbationConfig.late_brake_s}).",
    ),
    steer_rate: float | None = typer.Option(
        None, "--steer-rate",
        help=f"With --perturb: steering-offset windows per second (default {PerturbationConfig.steer_rate}).",
    ),
) -> None:
    """Record expert driving (labels + bucket tags + scene snapshots) as a dataset."""
    if not 1 <= hz <= 20:
        _fail("--hz must be between 1 and 20")
    settings = {"brake_onset_p": brake_onset_p, "late_brake_s": late_brake_s, "steer_rate": steer_rate}
    settings = {k: tuple(v) if k == "late_brake_s" else v for k, v in settings.items() if v is not None}
    perturbation = None
    if settings and not perturb:
        _fail(f"{', '.join('--' + k.replace('_', '-') for k in settings)} only apply with --perturb")
    if perturb:
        try:
            perturbation = PerturbationConfig(**settings)
        except ValueError as exc:
            _fail(str(exc))
    job = CollectJob(
        map=map,
        out=out,
        routes=routes,
        route_ids=route_id or None,
        agent=agent,
        hz=hz,
        num_routes=num_routes,
        seed=seed,
        vehicles=vehicles,
        pedestrians=pedestrians,
        max_ticks=max_ticks,
        shard_frames=shard_frames,
        image_format=image_format,
        perturbation=perturbation,
        log=typer.echo,
    )
    _run_collect(collect_expert, job)


@data_app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="Dataset folder."),
    out: Path | None = typer.Option(None, "--out", help="Figure folder (default DIR/inspect)."),
    num_figures: int = typer.Option(4, "--num-figures", help="Segments to render."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarise a dataset (frames, segments by trigger, buckets, routes) and render a few segments."""
    from envs.dataset import DatasetError

    try:
        summary, figures = inspect_dataset(path, out, num_figures)
    except DatasetError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=1) if as_json else _summary_text(summary))
    for f in figures:
        typer.echo(f"figure: {f}")


@collect_app.command("takeover")
def collect_takeover_cmd(
    policy: str = typer.Option(..., "--policy", help="Policy that drives (name or module:Class)."),
    map: str = typer.Option(
        ..., "--map", help="Map name, OpenDRIVE / .net.xml file or a folder of TownXX.xodr."
    ),
    out: Path = typer.Option(..., "--out", help="Dataset folder (appended to; existing shards are kept)."),
    routes: str | None = typer.Option(None, "--routes", help="Route XML; without it, random routes."),
    route_id: list[str] | None = typer.Option(None, "--route-id", help="Only these route ids (repeatable)."),
    expert: str | None = typer.Option(
        None, "--expert", help="Shadow expert (default: expert, else lane_follow)."
    ),
    trigger: list[str] | None = typer.Option(
        None, "--trigger", help="Triggers (default follow, collision, restart)."
    ),
    t_pre: int = typer.Option(20, "--t-pre"),
    t_take: int = typer.Option(50, "--t-take"),
    hold_speed: float = typer.Option(
        0.5, "--hold-speed",
        help="After a takeover the expert keeps control while the ego is slower than this (m/s; 0: no hold).",
    ),
    num_routes: int = typer.Option(2, "--num-routes", help="Random routes when --routes is not given."),
    vehicles: int = typer.Option(20, "--vehicles"),
    pedestrians: int = typer.Option(5, "--pedestrians"),
    seed: int = typer.Option(0, "--seed"),
    max_ticks: int = typer.Option(4000, "--max-ticks", help="Tick cap per route."),
    shard_frames: int = typer.Option(512, "--shard-frames"),
    image_format: str = typer.Option("png", "--image-format"),
) -> None:
    """Drive a policy with the expert in shadow mode and record takeover segments
    (`envs.takeover.TakeoverCollector`)."""
    if t_take < 1 or t_pre < 0:
        _fail(f"--t-take must be >= 1 and --t-pre >= 0 (got {t_take}, {t_pre})")
    if hold_speed < 0:
        _fail(f"--hold-speed must be >= 0 (got {hold_speed})")
    job = CollectJob(
        map=map,
        out=out,
        routes=routes,
        route_ids=route_id or None,
        agent=expert,
        policy=policy,
        triggers=list(trigger) if trigger else None,
        t_pre=t_pre,
        t_take=t_take,
        hold_speed=hold_speed,
        num_routes=num_routes,
        seed=seed,
        vehicles=vehicles,
        pedestrians=pedestrians,
        max_ticks=max_ticks,
        shard_frames=shard_frames,
        image_format=image_format,
        log=typer.echo,
    )
    _run_collect(collect_takeover, job)
