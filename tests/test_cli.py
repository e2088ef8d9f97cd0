"""`takeover drive` end to end on the embedded default, and its error handling."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from takeover.cli import app

runner = CliRunner()
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_help_lists_commands() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("drive", "demo", "maps"):
        assert cmd in res.output


def test_drive_writes_records_summary_figures_and_video(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "drive",
        "--map",
        "urban_grid",
        "--out",
        str(out),
        "--num-routes",
        "1",
        "--max-ticks",
        "120",
        "--vehicles",
        "5",
        "--pedestrians",
        "2",
        "--video",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    records = sorted(out.glob("route_*.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["status"].startswith(("Completed", "Failed"))
    assert set(rec["scores"]) == {"score_route", "score_penalty", "score_composed"}
    assert rec["meta"]["ticks"] <= 120
    summary = json.loads((out / "summary.json").read_text())
    assert "driving_score" in summary and "success_rate" in summary
    assert (out / "summary.png").stat().st_size > 0
    assert (out / f"route_{rec['route_id']}.png").stat().st_size > 0
    assert (out / rec["video"]).stat().st_size > 0

    # --resume keeps the finished route instead of driving it again
    mtime = records[0].stat().st_mtime
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert "already done" in res.output
    assert records[0].stat().st_mtime == mtime


def test_drive_unknown_agent_and_map_are_clear_errors(tmp_path: Path) -> None:
    res = runner.invoke(app, ["drive", "--map", "urban_grid", "--out", str(tmp_path), "--agent", "nope"])
    assert res.exit_code == 2
    assert "unknown agent 'nope'" in res.output
    res = runner.invoke(app, ["drive", "--map", "atlantis", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "atlantis" in res.output


def test_drive_agent_args_are_checked(tmp_path: Path) -> None:
    base = ["drive", "--map", "urban_grid", "--out", str(tmp_path)]
    res = runner.invoke(app, [*base, "--agent-arg", "creep"])
    assert res.exit_code == 2 and "expected KEY=VALUE" in res.output
    res = runner.invoke(app, [*base, "--agent", "constant", "--agent-arg", "wings=2"])
    assert res.exit_code == 2 and "wings" in res.output


def test_drive_routes_without_matching_map_is_an_error(tmp_path: Path) -> None:
    routes = SHARED / "routes" / "bench2drive220_town01-05.xml"
    if not routes.is_file():
        import pytest

        pytest.skip("../shared/data is absent")
    res = runner.invoke(
        app,
        [
            "drive",
            "--map",
            str(SHARED / "carla" / "maps" / "Town04.xodr"),
            "--routes",
            str(routes),
            "--route-id",
            "24206",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 2
    assert "no route" in res.output and "Town03" in res.output


def test_shipped_env_config_loads() -> None:
    from envs.driving_env import EnvConfig

    cfg = EnvConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "env_urban_grid.yaml")
    assert cfg.map == "urban_grid" and cfg.camera.width == 256 and cfg.traffic.vehicles == 40


def test_drive_records_a_broken_town_per_route_and_goes_on(tmp_path: Path) -> None:
    routes = SHARED / "routes" / "bench2drive220_town01-05.xml"
    if not routes.is_file():
        import pytest

        pytest.skip("../shared/data is absent")
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "Town01.xodr").write_bytes((SHARED / "carla" / "maps" / "Town01.xodr").read_bytes())
    (maps / "Town04.xodr").write_text("<OpenDRIVE><header")  # truncated: not XML
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "drive",
            "--map",
            str(maps),
            "--routes",
            str(routes),
            "--route-id",
            "26406",
            "--route-id",
            "24781",
            "--out",
            str(out),
            "--max-ticks",
            "60",
            "--vehicles",
            "5",
        ],
    )
    assert res.exit_code == 0, res.output
    broken = json.loads((out / "route_26406.json").read_text())
    assert broken["status"] == "Failed - Map could not be loaded"
    assert "Town04.xodr" in broken["error"] and broken["scores"]["score_composed"] == 0.0
    driven = json.loads((out / "route_24781.json").read_text())
    assert driven["meta"]["ticks"] > 0
    assert json.loads((out / "summary.json").read_text())["driving_score"] >= 0.0
