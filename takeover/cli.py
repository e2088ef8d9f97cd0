"""The `takeover` command line."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from takeover.cli_errors import SIGTERM_EXIT_STATUS, on_sigterm
from takeover.cli_errors import fail as _fail
from takeover.data_cli import collect_app, data_app
from takeover.scenarios_cli import scenarios_app

app = typer.Typer(
    help="Post-train driving policies with expert takeover data. Start with `takeover demo`.",
    no_args_is_help=True,
    add_completion=False,
)
maps_app = typer.Typer(help="Road networks: procedural maps and OpenDRIVE conversion.", no_args_is_help=True)
app.add_typer(maps_app, name="maps")
app.add_typer(scenarios_app, name="scenarios")
app.add_typer(collect_app, name="collect")
app.add_typer(data_app, name="data")


def _agent_kwargs(items: list[str]) -> dict:
    """KEY=VALUE pairs; values are read as YAML scalars (true, 3, 0.5, text)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--agent-arg {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


@app.command()
def drive(
    map: str = typer.Option(
        ...,
        "--map",
        help="Procedural map name (urban_grid, highway, rural), an OpenDRIVE "
        "file, a .net.xml, or a folder of TownXX.xodr files (route towns pick the map).",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder for records, figures and videos."),
    routes: str | None = typer.Option(
        None,
        "--routes",
        help="Leaderboard 1.0 or Bench2Drive route XML. Without it, random routes on the map.",
    ),
    route_id: list[str] | None = typer.Option(None, "--route-id", help="Only these route ids (repeatable)."),
    agent: str = typer.Option(
        "lane_follow",
        "--agent",
        help="Agent name, checkpoint:PATH (a learned policy) or import path module:Class.",
    ),
    agent_arg: list[str] | None = typer.Option(
        None, "--agent-arg", help="KEY=VALUE for the agent's constructor (repeatable), e.g. creep=true."
    ),
    video: bool = typer.Option(False, "--video", help="Write an MP4 (camera + bird's-eye view) per route."),
    num_routes: int = typer.Option(
        2, "--num-routes", help="Random routes to drive when --routes is not given."
    ),
    vehicles: int = typer.Option(40, "--vehicles", help="Background vehicles kept around the route."),
    pedestrians: int = typer.Option(10, "--pedestrians", help="Background pedestrians."),
    seed: int = typer.Option(0, "--seed"),
    max_ticks: int = typer.Option(
        4000, "--max-ticks", help="Tick cap per route (20 Hz); 4000 as Bench2Drive."
    ),
    resume: bool = typer.Option(False, "--resume", help="Keep routes whose record already exists in --out."),
) -> None:
    """Drive routes closed-loop and write one Bench2Drive-style record per route plus a summary."""
    from envs.maps.build import MapError
    from envs.routes import RouteFileError
    from envs.sumo_backend import SimulatorError, TrafficConfig
    from takeover.drive import DriveJob
    from takeover.drive import drive as run_drive

    job = DriveJob(
        map=map,
        out=out,
        agent=agent,
        agent_kwargs=_agent_kwargs(agent_arg or []),
        routes=routes,
        route_ids=route_id or None,
        num_random_routes=num_routes,
        video=video,
        seed=seed,
        max_ticks=max_ticks,
        resume=resume,
        traffic=TrafficConfig(vehicles=vehicles, pedestrians=pedestrians),
    )
    try:
        run_drive(job)
    except (MapError, RouteFileError, SimulatorError, ValueError, TypeError) as exc:
        _fail(str(exc))


@app.command()
def pretrain(
    data: list[Path] = typer.Option(..., "--data", help="Dataset folder (repeatable)."),
    config: Path | None = typer.Option(
        None, "--config", help="Pre-training YAML (policy + train sections); default: tiny VLA."
    ),
    out: Path = typer.Option(Path("runs/pretrain"), "--out", help="Run folder (checkpoints, logs, figure)."),
    resume: bool = typer.Option(False, "--resume", help="Continue --out's run from its newest checkpoint."),
    init: Path | None = typer.Option(
        None, "--init", help="Start from this checkpoint's weights (a checkpoint or run folder; its "
        "architecture and config replace the config's policy section), a fresh optimiser and schedule.",
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Override train.epochs."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Override train.max_minutes."),
) -> None:
    """Imitation pre-training of the VLA or the compact planner on expert data. SIGTERM stops it after the
    current step with a checkpoint (`--resume` continues) and exit status 143; while the data is still
    loading, at once."""
    import threading

    from envs.dataset import DatasetError
    from learner.data import DataError
    from learner.pretrain import PretrainConfig, PretrainError
    from learner.pretrain import pretrain as run_pretrain
    from policies.checkpoint import CheckpointError

    try:
        cfg = PretrainConfig.load(config)
        if init is not None:  # the config file's architecture, if one was given, must be the checkpoint's
            cfg = cfg.starting_from(init, check_architecture=config is not None)
        if epochs is not None:
            cfg.train.epochs = epochs
        if max_minutes is not None:
            cfg.train.max_minutes = max_minutes
        stop, loaded = threading.Event(), threading.Event()

        def on_term() -> None:  # once training runs, end the step and checkpoint; before, nothing to save
            if loaded.is_set():
                stop.set()
                return
            kept = "the run's checkpoints are as they were" if resume else "nothing was trained"
            typer.secho(f"terminated (SIGTERM) while loading the data: {kept}", err=True)
            raise typer.Exit(SIGTERM_EXIT_STATUS)

        with on_sigterm(on_term):
            run = run_pretrain([str(d) for d in data], cfg, out, resume=resume, stop=stop, loaded=loaded)
    except (PretrainError, DataError, DatasetError, CheckpointError, FileNotFoundError) as exc:
        _fail(str(exc))
    if stop.is_set():
        typer.secho(f"terminated (SIGTERM): checkpoint written, `--resume` continues {run}", err=True)
        raise typer.Exit(SIGTERM_EXIT_STATUS)
    typer.echo(f"checkpoints in {run}/checkpoints (latest: {(run / 'checkpoints' / 'latest').read_text()}); "
               f"curve: {run}/training_curve.png")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder."),
    num_routes: int = typer.Option(2, "--num-routes"),
) -> None:
    """A small end-to-end run on the embedded default: random routes on the procedural urban grid."""
    from envs.sumo_backend import TrafficConfig
    from takeover.drive import DriveJob
    from takeover.drive import drive as run_drive

    job = DriveJob(
        map="urban_grid",
        out=out,
        agent="lane_follow",
        num_random_routes=num_routes,
        video=True,
        traffic=TrafficConfig(vehicles=30, pedestrians=15),
    )
    run_drive(job)
    typer.echo(f"open {out}/summary.json, {out}/route_*.png and {out}/route_*.mp4")


@maps_app.command("list")
def maps_list() -> None:
    """Procedural maps the project generates itself."""
    from envs.maps.build import PROCEDURAL_MAPS

    for name, entry in PROCEDURAL_MAPS.items():
        doc = (getattr(entry, "__doc__", "") or "").strip().splitlines()
        typer.echo(f"{name:12s} {doc[0] if doc else ''}")


@maps_app.command("build")
def maps_build(spec: str = typer.Argument(..., help="Procedural map name or OpenDRIVE file.")) -> None:
    """Build (or find in the cache) the SUMO network for a map and print its path and size."""
    from envs.maps.build import MapError, resolve_map
    from envs.maps.network import load_lane_graph

    try:
        path = resolve_map(spec)
        g = load_lane_graph(path)
    except MapError as exc:
        _fail(str(exc))
    info = {
        "net": str(path),
        "lanes": len(g),
        "drivable_lanes": int(g.drivable.sum()),
        "traffic_light_links": len(g.tl_ids),
        "traffic_lights": len(set(g.tl_ids)),
        "stop_lanes": len(g.stop_lanes),
        "junctions": len(g.junction_ids),
    }
    typer.echo(json.dumps(info, indent=1))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
