"""The compact planner: shapes, the mixture likelihood, sampling, anchors, the masked loss, learning a
toy task, and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm

from policies.checkpoint import CONFIG_FILE, CheckpointError, load_policy, write_config
from policies.planner import CompactPlanner, PlannerConfig

TINY = {"image_size": (32, 64), "channels": [8, 16], "hidden": 32, "n_modes": 8}


def tiny(**kw) -> CompactPlanner:
    torch.manual_seed(0)
    return CompactPlanner(PlannerConfig(**{**TINY, **kw}))


def make_batch(b: int, seed: int = 0, image_hw: tuple[int, int] = (32, 64)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (b, 3, *image_hw), dtype=torch.uint8, generator=g),
        "speed": torch.rand(b, generator=g) * 10,
        "target_points": torch.randn(b, 2, 2, generator=g) * 10,
        "command": torch.randint(-1, 7, (b,), generator=g),
        "path": torch.randn(b, 20, 2, generator=g) * 5,
        "speed_waypoints": torch.randn(b, 10, 2, generator=g) * 3,
        "has_path": torch.ones(b, dtype=torch.bool),
        "has_speed_waypoints": torch.ones(b, dtype=torch.bool),
    }


def subset(batch: dict, idx: list[int]) -> dict:
    return {k: v[idx] for k, v in batch.items()}


def test_shapes_and_default_anchors():
    model = tiny()
    batch = make_batch(3, image_hw=(40, 80))  # resized inside
    out = model(batch)
    assert out["logits"].shape == (3, 8) and out["trajectories"].shape == (3, 8, 60)
    pred = model.predict(batch)
    assert pred["path"].shape == (3, 20, 2) and pred["speed_waypoints"].shape == (3, 10, 2)
    a = model.anchors
    assert a.shape == (8, 60)
    path, wps = CompactPlanner.split(a)
    assert torch.allclose(path[:, :, 0], torch.arange(1.0, 21.0).expand(8, 20)) and (path[..., 1] == 0).all()
    assert (wps[:, -1, 0].diff() > 0).all() and wps[0].abs().max() == 0  # speeds 0 .. max, straight
    assert torch.equal(CompactPlanner.join(path, wps), a)
    with pytest.raises(ValueError, match="command"):
        model({**batch, "command": torch.tensor([7, 0, 0])})


def test_log_prob_matches_brute_force():
    model = tiny(sigma=0.7)
    batch = make_batch(2)
    with torch.no_grad():
        out = model(batch)
        modes = out["trajectories"].double().numpy()
        log_w = torch.log_softmax(out["logits"].double(), -1).numpy()
        g = torch.Generator().manual_seed(1)
        near = out["trajectories"][:, :3] + 0.5 * torch.randn(2, 3, 60, generator=g)  # close to modes
        trajs = torch.cat([near, torch.randn(2, 2, 60, generator=g) * 3], dim=1)  # and far ones
        lp = model.log_prob(batch, trajs)
        lp_single = model.log_prob(batch, trajs[:, 0])
    assert lp.shape == (2, 5) and lp_single.shape == (2,)
    for b in range(2):
        for n in range(5):
            t = trajs[b, n].double().numpy()
            per_mode = [log_w[b, k] + norm.logpdf(t, modes[b, k], 0.7).sum() for k in range(8)]
            ref = logsumexp(per_mode)
            assert lp[b, n].item() == pytest.approx(ref, rel=1e-5, abs=1e-3)
    assert torch.allclose(lp_single, lp[:, 0])


def test_sample_log_probs_and_predict_argmax():
    model = tiny()
    batch = make_batch(4)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        s = model.sample(batch, 6, generator=g)
        out = model(batch)
        pred = model.predict(batch)
        greedy = model.sample(batch, 2, temperature=0.0)
    assert (
        s["trajectories"].shape == (4, 6, 60)
        and s["modes"].shape == (4, 6)
        and s["log_probs"].shape == (4, 6)
    )
    expect = out["trajectories"][torch.arange(4)[:, None], s["modes"]]
    assert torch.equal(s["trajectories"], expect)
    with torch.no_grad():
        assert torch.allclose(s["log_probs"], model.log_prob(batch, s["trajectories"]))
    best = out["logits"].argmax(-1)
    assert torch.equal(pred["mode"], best)
    path, wps = CompactPlanner.split(out["trajectories"][torch.arange(4), best])
    assert torch.equal(pred["path"], path) and torch.equal(pred["speed_waypoints"], wps)
    assert (greedy["modes"] == best[:, None]).all()
    # the same generator seed gives the same draws
    with torch.no_grad():
        again = model.sample(batch, 6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again["modes"], s["modes"])


def test_kmeans_anchors_find_clusters():
    model = tiny(n_modes=3)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 60, generator=g) * 10
    trajs = torch.cat([c + 0.3 * torch.randn(200, 60, generator=g) for c in centres])
    trajs[5] = float("nan")  # dropped
    anchors = model.set_anchors(trajs, seed=1)
    d = torch.cdist(centres, anchors)
    assert d.min(dim=1).values.max() < 0.3 and d.min(dim=0).values.max() < 0.3  # one anchor per cluster
    again = tiny(n_modes=3).set_anchors(trajs, seed=1)
    assert torch.equal(again, anchors)
    with pytest.raises(ValueError, match="at least"):
        model.set_anchors(trajs[:2])


def test_training_loss_masks():
    model = tiny()
    batch = make_batch(6)
    batch["action_weight"] = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    batch["has_path"][2] = False
    batch["path"][2] = float("nan")  # missing labels never reach the loss
    full = model.training_loss(batch)
    kept = model.training_loss(subset(batch, [0, 3, 5]))
    assert int(full["n_action"]) == 3 and int(kept["n_action"]) == 3
    for key in ("loss", "cls_loss", "reg_loss"):
        assert full[key].item() == pytest.approx(kept[key].item(), rel=1e-5)
    full["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.zero_grad()
    none = model.training_loss({**batch, "action_weight": torch.zeros(6)})
    assert none["loss"].item() == 0.0 and none["loss"].requires_grad and int(none["n_action"]) == 0
    none["loss"].backward()
    no_weight = {k: v for k, v in make_batch(2).items() if k != "action_weight"}
    assert int(model.training_loss(no_weight)["n_action"]) == 2


def toy_batch(b: int, seed: int) -> dict[str, torch.Tensor]:
    """Turn left when the target point lies left (y > 0), right otherwise, at 3 or 6 m/s (the input speed).
    The images carry no signal (and are small, to keep the test fast)."""
    g = torch.Generator().manual_seed(seed)
    side = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    speed = torch.where(torch.rand(b, generator=g) < 0.5, 3.0, 6.0)
    tp = torch.stack([torch.full((b,), 15.0), side * (5 + 3 * torch.rand(b, generator=g))], -1)
    x = torch.arange(1.0, 21.0)
    path = torch.stack([x.expand(b, 20), side[:, None] * 0.02 * x**2], -1)
    t = 0.25 * torch.arange(1.0, 11.0)
    wps = torch.stack([speed[:, None] * t, torch.zeros(b, 10)], -1)
    return {
        "image": torch.randint(0, 256, (b, 3, 16, 32), dtype=torch.uint8, generator=g),
        "speed": speed,
        "target_points": torch.stack([tp, tp * 2], 1),
        "command": torch.full((b,), 4),
        "path": path,
        "speed_waypoints": wps,
    }


def test_learns_turn_direction():
    model = tiny(image_size=(16, 32))
    data = toy_batch(256, seed=0)
    model.set_anchors(CompactPlanner.join(data["path"], data["speed_waypoints"]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(120):
        idx = torch.randint(0, 256, (32,), generator=g).tolist()
        loss = model.training_loss(subset(data, idx))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.2 * np.mean(losses[:5])
    test = toy_batch(64, seed=1)
    with torch.no_grad():
        pred = model.predict(test)
        expert = CompactPlanner.join(test["path"], test["speed_waypoints"])
        mirrored = CompactPlanner.join(test["path"] * torch.tensor([1.0, -1.0]), test["speed_waypoints"])
        margin = model.log_prob(test, expert) - model.log_prob(test, mirrored)
    side = torch.sign(test["target_points"][:, 0, 1])
    assert (torch.sign(pred["path"][:, -1, 1]) == side).float().mean() > 0.95
    assert margin.median() > 0  # the expert's turn is the likelier one


def test_save_load_round_trip(tmp_path):
    model = tiny()
    model.set_anchors(torch.randn(50, 60))
    model.save(tmp_path / "ckpt", meta={"step": 3})
    loaded = CompactPlanner.load(tmp_path / "ckpt")
    assert loaded.config == model.config and not loaded.training
    assert torch.equal(loaded.anchors, model.anchors)
    batch = make_batch(3)
    model.eval()
    with torch.no_grad():
        a, b = model(batch), loaded(batch)
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["trajectories"], b["trajectories"])
    assert isinstance(load_policy(tmp_path / "ckpt"), CompactPlanner)

    write_config(tmp_path / "vla", "vla", {})
    with pytest.raises(CheckpointError, match=r"'vla'.*'planner'"):
        CompactPlanner.load(tmp_path / "vla")

    doc = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    doc["config"]["n_modes"] = 4
    (tmp_path / "ckpt" / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"shape mismatch.*anchors"):
        CompactPlanner.load(tmp_path / "ckpt")
    write_config(tmp_path / "empty", "planner", TINY)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        CompactPlanner.load(tmp_path / "empty")


def test_config_round_trip_and_unknown_keys():
    cfg = PlannerConfig(**TINY)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert PlannerConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match=r"\['bogus', 'extra'\]"):
        PlannerConfig.from_dict({**d, "bogus": 1, "extra": 2})
    with pytest.raises(ValueError, match="sigma"):
        PlannerConfig(sigma=0.0)
