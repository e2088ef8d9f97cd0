"""`takeover scenarios ...`: the Bench2Drive scenario catalogue, the training-route sampler, the gallery."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from takeover.cli_errors import fail as _fail

scenarios_app = typer.Typer(
    help="Bench2Drive scenario types: catalogue, sampling them onto training routes, a gallery.",
    no_args_is_help=True,
)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict]) -> str:
    """The README table of the 44 Bench2Drive types."""
    out = [
        "| Scenario type | Abilities | Implemented | Description | Differs from CARLA |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {_md(r['type'])} | {_md(', '.join(r['abilities']))} | {'yes' if r['implemented'] else 'no'} "
            f"| {_md(r['description'])} | {_md(r['differs_from_carla']) if r['implemented'] else '-'} |"
        )
    return "\n".join(out)


@scenarios_app.command("list")
def list_types(
    as_json: bool = typer.Option(False, "--json", help="One JSON object per type (a list)."),
    markdown: bool = typer.Option(False, "--markdown", help="The README's Markdown table."),
) -> None:
    """Every Bench2Drive scenario type: implemented or not, abilities, description, differences from CARLA."""
    from envs.scenarios.catalog import catalog_rows

    if as_json and markdown:
        _fail("--json and --markdown exclude each other")
    rows = catalog_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    if markdown:
        typer.echo(markdown_table(rows))
        return
    width = max(len(r["type"]) for r in rows)
    for r in rows:
        flag = "yes" if r["implemented"] else "no "
        typer.echo(f"{r['type']:{width}s}  {flag}  {', '.join(r['abilities']):28s}  {r['description']}")
    done = sum(r["implemented"] for r in rows)
    typer.echo(f"{done} of {len(rows)} types implemented")


def _parse_types(types: str | None) -> list[str] | None:
    if not types:
        return None
    return [t.strip() for t in types.split(",") if t.strip()]


def _town_of(map_arg: str) -> str:
    p = Path(map_arg)
    return p.name.split(".")[0] if p.suffix in (".xodr", ".xml") else map_arg


@scenarios_app.command("sample")
def sample(
    map: str = typer.Option(..., "--map", help="Procedural map, OpenDRIVE file, .net.xml, or a folder of "
                            "TownXX.xodr files (route towns pick the map; --random: N routes per town)."),
    out: Path = typer.Option(..., "--out", help="Route file to write (Bench2Drive format)."),  # noqa: B008
    routes: str | None = typer.Option(None, "--routes", help="Training route file to put scenarios on."),
    random: int = typer.Option(0, "--random", help="Draw this many random routes on the map (per town of a "
                               "maps folder) instead; with --eval-routes, overlapping ones are redrawn."),
    density: float = typer.Option(2.0, "--density", help="Scenarios per km of route."),
    types: str | None = typer.Option(None, "--types", help="Comma-separated types (default: implemented)."),
    seed: int = typer.Option(0, "--seed"),
    min_gap: float = typer.Option(60.0, "--min-gap", help="Metres between two trigger points."),
    eval_routes: str | None = typer.Option(
        None, "--eval-routes", help="Evaluation route file (e.g. Bench2Drive's): refuse training routes that "
        "overlap it and triggers near its triggers of the same type."),
    overlap_threshold: float = typer.Option(0.5, "--overlap-threshold", help="Largest share of a training "
                                            "route allowed on evaluation routes."),
    max_per_type: int = typer.Option(1, "--max-per-type", help="Instances of one type per route (0: no "
                                     "limit)."),
    min_length: float = typer.Option(300.0, "--min-length", help="Random routes: shortest length (m)."),
    max_length: float = typer.Option(1000.0, "--max-length", help="Random routes: longest length (m)."),
) -> None:
    """Place scenario instances along training routes and write them as a Bench2Drive route file."""
    from envs.maps.build import MapError, resolve_map
    from envs.maps.network import load_lane_graph
    from envs.routes import RouteFileError, map_route
    from envs.scenarios.base import ScenarioError
    from envs.scenarios.sampler import (
        load_eval_set,
        route_element,
        sample_scenarios,
        summary_lines,
        write_routes_xml,
    )
    from takeover.drive import DriveJob, plan_jobs

    if bool(routes) == bool(random):
        _fail("give either --routes FILE or --random N")
    if random < 0:
        _fail("--random must be positive")
    try:
        if routes:
            groups = [(m, specs or []) for m, specs in plan_jobs(
                DriveJob(map=map, out=out.parent, routes=routes, log=typer.echo))]
        elif Path(map).is_dir():
            groups = [(str(p), None) for p in sorted(Path(map).glob("Town*.xodr"))]
            if not groups:
                _fail(f"no TownXX.xodr maps in the folder {map}")
        else:
            groups = [(map, None)]
        all_sampled = []
        for map_path, specs in groups:
            lanes = load_lane_graph(resolve_map(map_path))
            town = specs[0].town if specs else _town_of(map_path)
            eval_set = None
            if eval_routes:
                eval_set = load_eval_set(eval_routes, lanes, town)
                typer.echo(f"{town}: {len(eval_set.routes)} evaluation routes, {len(eval_set.triggers)} "
                           f"evaluation triggers from {eval_routes}")
            if specs is None:
                mapped = _draw_random_routes(lanes, town, random, seed, min_length, max_length, eval_set,
                                             overlap_threshold)
            else:
                mapped = []
                for spec in specs:
                    try:
                        mapped.append(map_route(spec, lanes))
                    except RouteFileError as exc:
                        typer.echo(f"skipping route {spec.route_id}: {exc}")
            sampled = sample_scenarios(lanes, mapped, _parse_types(types), density, seed, min_gap, eval_set,
                                       overlap_threshold, max_per_type if max_per_type > 0 else None)
            # Waypoints are written per network (CARLA coordinates of this town's lanes).
            all_sampled.append((sampled, lanes, town))
        if len(all_sampled) == 1:
            sampled, lanes, town = all_sampled[0]
            write_routes_xml(out, sampled, lanes, town)
        else:
            _write_multi(out, all_sampled, route_element)
    except (MapError, RouteFileError, ScenarioError, ValueError) as exc:
        _fail(str(exc))
    flat = [sr for sampled, _, _ in all_sampled for sr in sampled]
    for line in summary_lines(flat):
        typer.echo(line)
    typer.echo(f"wrote {out}")


def _draw_random_routes(lanes, town: str, n: int, seed: int, min_length: float, max_length: float,
                        eval_set, overlap_threshold: float) -> list:
    """`n` random routes on `lanes`; with an evaluation set, routes running more than `overlap_threshold`
    on evaluation routes are redrawn (up to 20 draws per route kept)."""
    from envs.routes import random_route
    from envs.scenarios.sampler import overlap_by_route

    rng = np.random.default_rng(seed)
    kept, redrawn = [], 0
    for _ in range(20 * n):
        if len(kept) == n:
            break
        r = random_route(lanes, rng, min_length=min_length, max_length=max_length, town=town)
        if eval_set is not None and overlap_by_route(r, eval_set.routes)[0] > overlap_threshold:
            redrawn += 1
            continue
        r.route_id = f"{town}-s{seed}-{len(kept)}"
        kept.append(r)
    if redrawn:
        typer.echo(f"{town}: redrew {redrawn} random routes that ran on evaluation routes")
    if len(kept) < n:
        typer.echo(f"{town}: only {len(kept)} of {n} random routes stay off the evaluation routes")
    return kept


def _write_multi(out: Path, groups: list, route_element) -> None:
    """A route file with the routes of several towns (each written with its own network)."""
    import xml.etree.ElementTree as ET

    root = ET.Element("routes")
    for sampled, lanes, town in groups:
        for sr in sampled:
            root.append(route_element(sr, lanes, town))
    ET.indent(root, space="   ")
    out.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)


@scenarios_app.command("render")
def render(
    map: str = typer.Option(..., "--map", help="Map of the routes, or a folder of TownXX.xodr files."),
    routes: str = typer.Option(..., "--routes", help="Route file with scenarios."),
    out: Path = typer.Option(..., "--out", help="Gallery folder (PNG per type, index.md)."),  # noqa: B008
    types: str | None = typer.Option(None, "--types", help="Comma-separated types (default: the file's)."),
    clip: bool = typer.Option(False, "--clip", help="Also a short MP4 clip per type."),
    sample_missing: bool = typer.Option(
        False, "--sample-missing", help="Place implemented types the file lacks on its routes (sampler)."),
    seed: int = typer.Option(0, "--seed"),
    vehicles: int = typer.Option(10, "--vehicles", help="Background vehicles."),
    pedestrians: int = typer.Option(4, "--pedestrians", help="Background pedestrians."),
) -> None:
    """Gallery: drive each scenario type's first route to the scenario's key moment and save a bird's-eye
    image of it."""
    from envs.maps.build import MapError
    from envs.routes import RouteFileError
    from envs.scenarios.base import ScenarioError
    from envs.sumo_backend import TrafficConfig
    from takeover.gallery import GalleryJob, render_gallery

    job = GalleryJob(
        map=map, routes=routes, out=out, types=_parse_types(types), clip=clip, sample_missing=sample_missing,
        seed=seed, traffic=TrafficConfig(vehicles=vehicles, pedestrians=pedestrians), log=typer.echo,
    )
    try:
        items = render_gallery(job)
    except (MapError, RouteFileError, ScenarioError, ValueError) as exc:
        _fail(str(exc))
    ok = sum(it.ok for it in items)
    typer.echo(f"{ok} of {len(items)} types rendered -> {out / 'index.md'}")
