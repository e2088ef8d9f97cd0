"""`takeover scenarios list | sample | render` (typer CliRunner), and ability scores in `takeover drive`."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from helpers import B2D, TOWN04, shared_data
from typer.testing import CliRunner

from envs.maps.build import resolve_map
from envs.maps.network import load_lane_graph
from envs.routes import map_route, parse_routes, random_route
from envs.scenarios.sampler import sample_scenarios, write_routes_xml
from takeover.cli import app

runner = CliRunner()
FIELDS = {"type", "abilities", "implemented", "description", "differs_from_carla"}


def test_readme_table_is_the_generated_one():
    """README's scenario table must be `takeover scenarios list --markdown` (regenerate it when a type or
    its `differs_from_carla` line changes)."""
    from envs.scenarios.catalog import catalog_rows
    from takeover.scenarios_cli import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start, end = "<!-- scenario-table:start -->\n", "<!-- scenario-table:end -->"
    assert start in readme and end in readme
    table = readme.split(start, 1)[1].split(end, 1)[0].strip()
    assert table == markdown_table(catalog_rows()).strip()


def test_list_json_has_every_bench2drive_type():
    res = runner.invoke(app, ["scenarios", "list", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert len(rows) == 44
    assert all(set(r) == FIELDS for r in rows)
    by_type = {r["type"]: r for r in rows}
    assert by_type["ParkedObstacle"]["implemented"] is True
    assert by_type["ParkedObstacle"]["abilities"] == ["Overtaking"]
    assert by_type["PedestrianCrossing"]["abilities"] == ["Emergency Brake", "Traffic Signs"]
    assert all(r["description"] for r in rows)


def test_list_markdown_is_a_table_and_plain_lists_all():
    res = runner.invoke(app, ["scenarios", "list", "--markdown"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("| Scenario type | Abilities | Implemented |")
    assert set(lines[1].replace("|", "")) == {"-"}
    assert len(lines) == 2 + 44
    assert all(line.startswith("| ") and line.endswith(" |") and line.count(" | ") >= 4 for line in lines[2:])
    assert any(line.startswith("| HardBreakRoute | Emergency Brake | yes |") for line in lines)
    plain = runner.invoke(app, ["scenarios", "list"])
    assert plain.exit_code == 0 and "of 44 types implemented" in plain.output
    assert runner.invoke(app, ["scenarios", "list", "--json", "--markdown"]).exit_code == 2


def test_sample_writes_a_route_file(tmp_path: Path):
    out = tmp_path / "train.xml"
    args = ["scenarios", "sample", "--map", "urban_grid", "--random", "2", "--density", "4", "--seed", "3",
            "--types", "HardBreakRoute,ParkedObstacle", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    specs = parse_routes(out)
    assert len(specs) == 2 and all(s.town == "urban_grid" for s in specs)
    types = {sc.type for s in specs for sc in s.scenarios}
    assert types and types <= {"HardBreakRoute", "ParkedObstacle"}
    assert f"wrote {out}" in res.output and "per km" in res.output
    first = out.read_bytes()
    assert runner.invoke(app, args).exit_code == 0
    assert out.read_bytes() == first  # seeded


def test_sample_argument_errors(tmp_path: Path):
    out = str(tmp_path / "x.xml")
    res = runner.invoke(app, ["scenarios", "sample", "--map", "urban_grid", "--out", out])
    assert res.exit_code == 2 and "--routes FILE or --random N" in res.output
    res = runner.invoke(app, ["scenarios", "sample", "--map", "urban_grid", "--random", "1", "--types",
                              "NoSuchType", "--out", out])
    assert res.exit_code == 2 and "NoSuchType" in res.output
    assert not Path(out).exists()


@shared_data
def test_sample_refuses_training_routes_that_duplicate_evaluation_routes(tmp_path: Path):
    root = ET.parse(B2D).getroot()
    route = next(r for r in root.findall("route") if r.get("town") == "Town04")
    eval_id = route.get("id")
    route.set("id", "my_training_route")
    train = ET.Element("routes")
    train.append(route)
    path = tmp_path / "train.xml"
    ET.ElementTree(train).write(path)
    maps = B2D.parents[1] / "carla" / "maps"
    out = tmp_path / "sampled.xml"
    res = runner.invoke(app, ["scenarios", "sample", "--map", str(maps), "--routes", str(path),
                              "--eval-routes", str(B2D), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "disjoint" in res.output and "my_training_route" in res.output and eval_id in res.output
    assert not out.exists()


@shared_data
def test_sample_training_routes_against_the_evaluation_routes(tmp_path: Path):
    training = B2D.parent / "leaderboard1_training_town01-05.xml"
    if not training.is_file():
        pytest.skip("no Leaderboard 1.0 training routes")
    out = tmp_path / "town04_train.xml"
    res = runner.invoke(app, ["scenarios", "sample", "--map", str(TOWN04), "--routes", str(training),
                              "--eval-routes", str(B2D), "--types", "HardBreakRoute,PedestrianCrossing",
                              "--density", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "skipping" in res.output  # the other towns' routes (and any route off this map)
    assert "Town04: 12 evaluation routes" in res.output
    specs = parse_routes(out)
    assert specs and all(s.town == "Town04" for s in specs)
    assert sum(len(s.scenarios) for s in specs) > 0


@shared_data
def test_sample_random_routes_on_a_maps_folder_stay_off_the_evaluation_routes(tmp_path: Path):
    """Random routes: N per town of the folder; ones that run on evaluation routes are redrawn."""
    from envs.scenarios.sampler import load_eval_set, overlap_by_route

    maps = B2D.parents[1] / "carla" / "maps"
    out = tmp_path / "random.xml"
    res = runner.invoke(app, ["scenarios", "sample", "--map", str(maps), "--random", "6", "--min-length",
                              "250", "--max-length", "600", "--density", "4", "--seed", "74", "--eval-routes",
                              str(B2D), "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    specs = parse_routes(out)
    towns = sorted(p.stem for p in maps.glob("Town*.xodr"))
    assert sorted({s.town for s in specs}) == towns and len(specs) == 6 * len(towns)
    assert "redrew" in res.output  # seed 74 draws a Town04 route along evaluation routes
    lanes = load_lane_graph(resolve_map(str(TOWN04)))
    eval_set = load_eval_set(B2D, lanes, "Town04")
    for spec in (s for s in specs if s.town == "Town04"):
        assert overlap_by_route(map_route(spec, lanes), eval_set.routes)[0] <= 0.5


@pytest.fixture(scope="module")
def small_route_file(tmp_path_factory) -> Path:
    """One urban_grid route with a HardBreakRoute and a PedestrianCrossing, written by the sampler."""
    lanes = load_lane_graph(resolve_map("urban_grid"))
    for seed in range(50):
        route = random_route(lanes, np.random.default_rng(seed), 350.0, 600.0, town="urban_grid")
        sampled = sample_scenarios(lanes, [route], ["HardBreakRoute", "PedestrianCrossing"], density=6.0,
                                   seed=seed)
        types = [s.type for s in sampled[0].scenarios]
        if sorted(types) == ["HardBreakRoute", "PedestrianCrossing"]:
            return write_routes_xml(tmp_path_factory.mktemp("gallery") / "routes.xml", sampled, lanes)
    raise AssertionError("no route with one instance of each type")


def test_render_writes_a_gallery(small_route_file: Path, tmp_path: Path):
    from PIL import Image

    out = tmp_path / "gallery"
    res = runner.invoke(app, ["scenarios", "render", "--map", "urban_grid", "--routes", str(small_route_file),
                              "--out", str(out), "--vehicles", "3", "--pedestrians", "0"])
    assert res.exit_code == 0, res.output
    assert "[1/2] HardBreakRoute" in res.output and "[2/2] PedestrianCrossing" in res.output
    index = (out / "index.md").read_text()
    for t in ("HardBreakRoute", "PedestrianCrossing"):
        img = Image.open(out / f"{t}.png")
        assert img.size[0] == 480 and img.size[1] > 480  # the view plus a title bar
        pixels = np.asarray(img)
        assert pixels.std() > 10  # not blank
        assert f"![{t}]({t}.png)" in index
    assert "2 of 2 types rendered" in res.output


def test_render_records_errors_per_type(small_route_file: Path, tmp_path: Path):
    bad = tmp_path / "bad.xml"
    tree = ET.parse(small_route_file)
    sc = next(s for s in tree.getroot().iter("scenario") if s.get("type") == "PedestrianCrossing")
    sc.insert(0, ET.Element("no_such_parameter", {"value": "1"}))
    tree.write(bad)
    out = tmp_path / "gallery"
    res = runner.invoke(app, ["scenarios", "render", "--map", "urban_grid", "--routes", str(bad), "--out",
                              str(out), "--types", "PedestrianCrossing,ParkedObstacle", "--vehicles", "0",
                              "--pedestrians", "0"])
    assert res.exit_code == 0, res.output
    index = (out / "index.md").read_text()
    row = next(line for line in index.splitlines() if line.startswith("| PedestrianCrossing"))
    assert "error" in row and "no_such_parameter" in row
    assert "| ParkedObstacle |" in index and "not in the route file" in index
    assert not (out / "PedestrianCrossing.png").exists()
    assert not (out / "HardBreakRoute.png").exists()  # --types left it out


def test_render_samples_missing_types(small_route_file: Path, tmp_path: Path):
    only_crossing = tmp_path / "crossing_only.xml"
    tree = ET.parse(small_route_file)
    for scs in tree.getroot().iter("scenarios"):
        for sc in [s for s in scs if s.get("type") == "HardBreakRoute"]:
            scs.remove(sc)
    tree.write(only_crossing)
    out = tmp_path / "gallery"
    args = ["scenarios", "render", "--map", "urban_grid", "--routes", str(only_crossing), "--out", str(out),
            "--types", "HardBreakRoute", "--vehicles", "0", "--pedestrians", "0"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "not in the route file" in (out / "index.md").read_text()
    assert not (out / "HardBreakRoute.png").exists()
    res = runner.invoke(app, [*args, "--sample-missing", "--clip"])
    assert res.exit_code == 0, res.output
    assert (out / "HardBreakRoute.png").is_file()
    clip = next(out.glob("HardBreakRoute.*[4f]"))  # .mp4 (or .gif without ffmpeg)
    assert clip.stat().st_size > 1000
    row = next(line for line in (out / "index.md").read_text().splitlines() if line.startswith("| HardBreak"))
    assert "(sampled)" in row and "![HardBreakRoute](HardBreakRoute.png)" in row and f"]({clip.name})" in row


def test_drive_summary_has_ability_scores(small_route_file: Path, tmp_path: Path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["drive", "--map", "urban_grid", "--routes", str(small_route_file), "--out",
                              str(out), "--max-ticks", "60", "--vehicles", "2", "--pedestrians", "0"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["abilities"]) == {"Merging", "Overtaking", "Emergency Brake", "Give Way",
                                         "Traffic Signs", "mean"}
    assert summary["ability_counts"]["Emergency Brake"] == [0, 1]  # timed out after 60 ticks
    assert summary["abilities"]["Emergency Brake"] == 0.0
    assert summary["scenario_counts"] == {"HardBreakRoute": [0, 1], "PedestrianCrossing": [0, 1]}
    assert "abilities:" in res.output
