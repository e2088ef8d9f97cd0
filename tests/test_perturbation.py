"""Noise injection for expert data: the perturbation windows, and `collect expert --perturb` end to end."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from envs.dataset import open_dataset
from envs.geometry import to_ego_frame
from envs.perturbation import LATE_BRAKE, STEER, ControlPerturbation, PerturbationConfig
from takeover.cli import app

CRUISE = np.array([0.4, 0.0, 0.0], np.float32)
BRAKE = np.array([0.0, 0.8, 0.05], np.float32)


def _perturbation(**kw: object) -> ControlPerturbation:
    return ControlPerturbation(PerturbationConfig(**kw), np.random.default_rng(0))


def test_late_brake_window_withholds_the_brake_then_hands_back():
    p = _perturbation(brake_onset_p=1.0, steer_rate=0.0, late_brake_s=(1.0, 1.0), cooldown_s=2.0)
    assert np.array_equal(p.apply(0, CRUISE, 8.0), CRUISE)
    out = [p.apply(t, BRAKE, 8.0) for t in range(1, 40)]
    (w,) = p.windows
    assert (w.kind, w.start, w.end) == (LATE_BRAKE, 1, 21)  # 1 s at 20 Hz from the onset
    for o in out[:20]:  # no brake, the throttle held before the onset, the expert's steering
        assert o[1] == 0.0 and o[0] == pytest.approx(0.4) and o[2] == pytest.approx(0.05)
    assert all(np.array_equal(o, BRAKE) for o in out[20:])
    # a braking onset during the cooldown opens nothing; after it, one does
    p.apply(40, CRUISE, 8.0)
    p.apply(41, BRAKE, 8.0)
    assert len(p.windows) == 1
    assert p.in_recovery(10) and p.in_recovery(21 + 59) and not p.in_recovery(21 + 60)  # 3 s after
    p.apply(70, CRUISE, 8.0)
    assert p.apply(71, BRAKE, 8.0)[1] == 0.0 and len(p.windows) == 2
    assert p.summary() == {LATE_BRAKE: 2, STEER: 0, "ticks": 40}


def test_no_window_below_min_speed_and_steer_offsets_are_clipped():
    p = _perturbation(brake_onset_p=1.0, steer_rate=1000.0, min_speed=2.0)
    for t in range(20):
        p.apply(t, CRUISE if t % 2 else BRAKE, 1.0)
    assert p.windows == []
    full_left = np.array([0.3, 0.0, 1.0], np.float32)
    out = p.apply(20, full_left, 5.0)
    (w,) = p.windows
    assert w.kind == STEER and 0.04 <= abs(w.steer) <= 0.12
    assert out[2] == pytest.approx(float(np.clip(1.0 + w.steer, -1.0, 1.0)))
    assert out[0] == pytest.approx(0.3) and out[1] == 0.0


def test_same_seed_same_windows():
    def windows(seed: int) -> list:
        p = ControlPerturbation(PerturbationConfig(steer_rate=2.0), np.random.default_rng(seed))
        for t in range(2000):
            p.apply(t, BRAKE if t % 50 == 0 else CRUISE, 6.0)
        return [(w.kind, w.start, w.end, w.steer) for w in p.windows]

    assert windows(3) == windows(3) and len(windows(3)) > 5
    assert windows(3) != windows(4)


@pytest.mark.parametrize("bad", [{"brake_onset_p": 1.5}, {"steer_rate": -1.0}, {"late_brake_s": (2.0, 1.0)}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        PerturbationConfig(**bad)


def test_collect_expert_perturb_records_recoveries_with_the_experts_labels(tmp_path):
    """Same route and seed with and without --perturb: identical until the first window; inside it the
    executed steering is offset while the frames keep the expert's labels, and the expert's path label
    points back towards the unperturbed trajectory."""
    runner = CliRunner()
    common = ["collect", "expert", "--map", "urban_grid", "--num-routes", "1", "--vehicles", "0",
              "--pedestrians", "0", "--agent", "lane_follow", "--max-ticks", "240", "--seed", "2",
              "--hz", "20"]
    res = runner.invoke(app, [*common, "--out", str(tmp_path / "plain")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*common, "--out", str(tmp_path / "noisy"), "--perturb", "--steer-rate", "20"])
    assert res.exit_code == 0, res.output
    (plain,) = open_dataset(tmp_path / "plain").segments()
    (noisy,) = open_dataset(tmp_path / "noisy").segments()
    summary = noisy.info["perturbation"]
    assert summary[STEER] >= 1 and summary["ticks"] > 0 and "perturbation" not in plain.info

    rec = [f for f in noisy.frames if "recovery" in f.buckets]
    assert rec and not any("recovery" in f.buckets for f in plain.frames)
    first = rec[0].tick
    before = [k for k, f in enumerate(noisy.frames) if f.tick < first]
    for k in before:  # nothing differs before the first window opens
        assert np.allclose(noisy.frames[k].ego, plain.frames[k].ego)
    # the ego leaves the unperturbed trajectory within the recovery span ...
    by_tick = {f.tick: f for f in plain.frames}
    pairs = [(f, by_tick[f.tick]) for f in rec if f.tick in by_tick]
    dev = [float(np.hypot(*(f.ego[:2] - g.ego[:2]))) for f, g in pairs]
    assert max(dev) > 0.1
    # ... and at the largest deviation the expert's path label heads back towards it
    f, g = pairs[int(np.argmax(dev))]
    target = to_ego_frame(g.ego[None, :2], *f.ego[:3])[0]  # the unperturbed pose, seen from the ego
    assert np.sign(f.path[5, 1]) == np.sign(target[1])
    # recovery frames carry complete labels and, away from the episode's end, a planned expert future
    assert all(np.isfinite(f.path).all() and np.isfinite(f.speed_waypoints).all() for f in rec)
    assert all(np.isfinite(f.expert_future[:3]).all() for f in rec[:-10])


def test_collect_expert_refuses_a_bad_perturbation_range(tmp_path):
    res = CliRunner().invoke(app, ["collect", "expert", "--map", "urban_grid", "--out", str(tmp_path / "x"),
                                   "--perturb", "--late-brake-s", "2", "1"])
    assert res.exit_code != 0 and "late_brake_s" in res.output
    assert not (tmp_path / "x").exists()  # refused before anything is written
    # a perturbation setting without --perturb would silently record unperturbed data: refused
    res = CliRunner().invoke(app, ["collect", "expert", "--map", "urban_grid", "--out", str(tmp_path / "x"),
                                   "--steer-rate", "0.1"])
    assert res.exit_code != 0 and "--perturb" in res.output
    assert not (tmp_path / "x").exists()
