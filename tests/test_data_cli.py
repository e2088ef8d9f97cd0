"""`takeover collect expert|takeover` and `takeover data inspect` end to end on the urban grid."""

from __future__ import annotations

import json
import textwrap

import numpy as np
from typer.testing import CliRunner

from envs.dataset import open_dataset
from envs.segments import FUTURE_STEPS
from policies.language import ROUTE_PHRASES, SPEED_PHRASES
from takeover.cli import app

runner = CliRunner()

SMALL = ["--map", "urban_grid", "--num-routes", "1", "--vehicles", "5", "--pedestrians", "2"]


def test_collect_expert_writes_readable_dataset_and_inspect_renders(tmp_path):
    out = tmp_path / "expert"
    collect = ["collect", "expert", *SMALL, "--out", str(out), "--agent", "lane_follow", "--max-ticks", "80",
               "--seed", "1"]
    res = runner.invoke(app, collect)
    assert res.exit_code == 0, res.output
    ds = open_dataset(out)
    assert ds.kind == "expert"
    (seg,) = ds.segments()
    assert seg.trigger == "expert" and seg.info["agent"] == "lane_follow" and seg.info["hz"] == 4
    ticks = [f.tick for f in seg.frames]
    assert ticks == list(range(0, 5 * len(ticks), 5)) and len(ticks) >= 15  # 4 Hz of the 20 Hz ticks
    f0 = seg.frames[0]
    assert f0.image is not None and f0.image.shape == (128, 256, 3) and f0.image.std() > 5  # a real camera
    assert f0.path.shape == (20, 2) and f0.speed_waypoints.shape == (10, 2) and f0.language
    assert np.isfinite(f0.target_speed)
    assert "start_from_stop" in f0.buckets and "stopped" in f0.buckets
    # SimLingo-style commentary of the agent's state, phrasings drawn per tick (deterministic by seed)
    for f in seg.frames:
        route, _, speed = f.language.partition(". ")
        assert any(route.startswith(p) for ps in ROUTE_PHRASES.values() for p in ps), f.language
        assert any(speed.startswith(p) for ps in SPEED_PHRASES.values() for p in ps), f.language
    assert len({f.language.partition(". ")[0] for f in seg.frames}) > 1
    assert any("acceleration" in f.buckets for f in seg.frames)
    # the future trajectory is what the ego drove next: frame k's sample 5 (1.2 s = 24 ticks later)
    # lies between the poses of the frames recorded at +20 and +25 ticks; the last frames run out of future
    f = seg.frames[2]
    assert np.isfinite(f.expert_future).all()
    d_prev = np.hypot(*(f.expert_future[5, :2] - seg.frames[2 + 4].ego[:2]))
    d_next = np.hypot(*(f.expert_future[5, :2] - seg.frames[2 + 5].ego[:2]))
    step = np.hypot(*(seg.frames[2 + 5].ego[:2] - seg.frames[2 + 4].ego[:2]))
    assert d_prev <= step + 1e-6 and d_next <= step + 1e-6
    assert np.isnan(seg.frames[-1].expert_future[-1]).all()  # the episode ended before its end
    assert f.agent_future.shape == (len(f.agent_ids), FUTURE_STEPS, 5)
    if len(f.agent_ids):
        assert np.isfinite(f.agent_future[:, 0, :2]).any()

    # resume: the route is already there, nothing new is written
    res = runner.invoke(app, collect)
    assert res.exit_code == 0 and "skipped" in res.output
    assert len(open_dataset(out)) == len(seg.frames)

    res = runner.invoke(app, ["data", "inspect", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[: res.output.rindex("}") + 1])
    assert summary["frames"] == len(seg.frames) and summary["segments_by_trigger"] == {"expert": 1}
    assert summary["frames_with_image"] == len(seg.frames)
    assert summary["buckets"]["start_from_stop"] >= 1 and summary["routes"] == {"random-1": len(seg.frames)}
    figs = sorted((out / "inspect").glob("segment_*.png"))
    assert len(figs) == 1 and figs[0].stat().st_size > 10_000
    assert json.loads((out / "inspect" / "summary.json").read_text()) == summary
    # the figure folder inside the dataset does not disturb reading it
    assert len(open_dataset(out)) == len(seg.frames)


def test_inspect_reports_missing_dataset(tmp_path):
    res = runner.invoke(app, ["data", "inspect", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not found" in res.output


USER_TRIGGER = """
from envs.triggers import Trigger

class FireAtTen(Trigger):
    name = "fire_at_ten"

    def update(self, info):
        return info.tick == 10
"""


def test_collect_takeover_with_a_user_trigger(tmp_path, monkeypatch):
    (tmp_path / "my_trig_data_cli.py").write_text(textwrap.dedent(USER_TRIGGER))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "tk"
    res = runner.invoke(
        app,
        [
            "collect",
            "takeover",
            "--policy",
            "constant",
            "--expert",
            "lane_follow",
            *SMALL,
            "--out",
            str(out),
            "--trigger",
            "my_trig_data_cli:FireAtTen",
            "--t-pre",
            "4",
            "--t-take",
            "6",
            "--max-ticks",
            "60",
        ],
    )
    assert res.exit_code == 0, res.output
    ds = open_dataset(out)
    (seg,) = ds.segments()
    assert ds.kind == "takeover" and seg.trigger == "fire_at_ten" and seg.trigger_tick == 10
    assert seg.pre_takeover.tolist() == [True] * 4 + [False] * 6
    assert all(f.path is None for f in seg.frames[:4]) and all(f.path is not None for f in seg.frames[4:])
    assert [f.driver for f in seg.frames] == ["policy"] * 4 + ["expert"] * 6
    # pre-takeover frames: the label of the expert's state at the trigger (commentary: the user trigger
    # has no enhanced wording); the run's info names policy, expert and seed
    assert {f.language for f in seg.frames[:4]} == {seg.frames[4].language} and seg.frames[4].language
    assert seg.info["policy"] == "constant" and seg.info["expert"] == "lane_follow" and seg.info["seed"] == 0
    res = runner.invoke(app, ["data", "inspect", str(out), "--out", str(tmp_path / "figs")])
    assert res.exit_code == 0 and "fire_at_ten 1" in res.output
    assert len(list((tmp_path / "figs").glob("segment_*.png"))) == 1


CRASHING_POLICY = """
from envs.sumo_backend import SimulatorError
from policies.base import make_agent


class CrashAt90:
    '''Drives like `constant` and reports a dead simulator at tick 90 (the failure path of a real crash).'''

    name = "crash_at_90"
    privileged = True

    def __init__(self):
        self.inner = make_agent("constant")

    def reset(self, route):
        self.inner.reset(route)

    def act(self, obs, scene):
        if scene.tick == 90:
            raise SimulatorError("SUMO died (test)")
        return self.inner.act(obs, scene)
"""


def test_collect_takeover_keeps_finished_segments_when_the_simulator_dies(tmp_path, monkeypatch):
    (tmp_path / "my_trig_crash.py").write_text(textwrap.dedent(USER_TRIGGER))
    (tmp_path / "my_policy_crash.py").write_text(textwrap.dedent(CRASHING_POLICY))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "tk"
    res = runner.invoke(
        app,
        ["collect", "takeover", "--policy", "my_policy_crash:CrashAt90", "--expert", "lane_follow", *SMALL,
         "--out", str(out), "--trigger", "my_trig_crash:FireAtTen", "--t-pre", "4", "--t-take", "6"],
    )
    assert res.exit_code == 0, res.output
    assert "simulation failed" in res.output and "SUMO died" in res.output
    (seg,) = open_dataset(out).segments()  # finalised at tick 56 (2 s after its last frame), then written
    assert seg.trigger == "fire_at_ten" and len(seg.frames) == 10 and not seg.info["truncated"]


SIGTERM_CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from test_dataset import make_segment
from envs.dataset import DatasetWriter
from takeover.collect import CollectJob
from takeover.data_cli import _run_collect

def collect(job):  # the shape of collect_expert / collect_takeover: a writer closed in `finally`
    writer = DatasetWriter(job.out, kind="takeover", shard_frames=10_000)
    try:
        writer.add_segment(make_segment(3))  # buffered: far below shard_frames
        print("buffered", flush=True)
        time.sleep(60)
    finally:
        writer.close()

_run_collect(collect, CollectJob(map="urban_grid", out={out!r}))
"""


def test_sigterm_during_collection_writes_the_buffered_segments(tmp_path):
    """A scheduler's SIGTERM ends a collection with exit status 143 after its writer flushed what it held,
    instead of killing it with the segments of the unflushed shard lost."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "takeover"
    script = SIGTERM_CHILD.format(tests=str(Path(__file__).parent), out=str(out))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "buffered", child.stderr.read()
        child.send_signal(signal.SIGTERM)
        # generous: the flush takes well under a second, but on a loaded machine the child may wait minutes
        # for CPU time (it once took over 60 s there)
        _, err = child.communicate(timeout=240)
    finally:
        child.kill()
    assert child.returncode == 143, err
    assert "SIGTERM" in err
    (seg,) = open_dataset(out).segments()
    assert seg.segment_id == "seg3" and len(seg.frames) == 6
