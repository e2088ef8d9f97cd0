"""Imitation pre-training: sampling, Action Dreaming in the mix, checkpoints, resume, logs, the CLI."""

from __future__ import annotations

import itertools
import json
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from envs.dataset import DatasetWriter, open_dataset
from envs.scene import RoadOption
from envs.segments import FUTURE_STEPS, Frame, TakeoverSegment
from learner.data import (
    BatchBuilder,
    DataError,
    EncodedImages,
    FrameBank,
    bucket_weights,
    derived_tags,
    rate_stride,
    with_takeover_share,
)
from learner.pretrain import STATE_FILE, PretrainConfig, PretrainError, budget_step, lr_factor, pretrain
from learner.weight_average import WeightAverage
from policies.checkpoint import CheckpointError, load_policy
from policies.language import (
    ROUTE_PHRASES,
    RouteAction,
    SpeedAction,
    canonical_commentary,
    spoken_speed_action,
)
from takeover.cli import app

SMALL_VLA = {
    "architecture": "vla",
    "preset": "tiny",
    "config": {
        "vision": {"image_size": [32, 64], "token_grid": [2, 4], "embedding_size": 8, "hidden_sizes": [8, 16],
                   "depths": [1, 1]},
        "llm": {"hidden_size": 32, "intermediate_size": 64},
        "head_hidden": 32,
    },
}  # fmt: skip


def straight_frame(i: int, turn: float, speed: float = 5.0) -> Frame:
    """A frame on a straight two-lane road (lanes and route in the world frame = ego frame)."""
    x = np.arange(0.0, 60.0, 1.0)
    lanes = np.concatenate([np.column_stack([x, np.zeros_like(x), np.full_like(x, 1.75)]),
                            np.column_stack([x, np.full_like(x, 3.5), np.full_like(x, 1.75)])])  # fmt: skip
    img = np.zeros((32, 64, 3), np.uint8)
    if turn > 0:  # the bright half says which way the path bends
        img[:, :32] = 200
    else:
        img[:, 32:] = 200
    s = np.arange(1, 21, dtype=float)
    path = np.column_stack([s, turn * (s / 20.0) ** 2])
    t = 0.25 * np.arange(1, 11)
    return Frame(
        tick=i * 4, route_id="r1", town="grid", image=img, speed=speed,
        target_points=np.array([[10.0, turn], [30.0, turn]], np.float32), command=int(RoadOption.LANEFOLLOW),
        language="Follow the route. Maintain speed." if turn == 0 else "Follow the route. Turn left.",
        path=path, speed_waypoints=np.column_stack([speed * t, np.zeros_like(t)]), target_speed=speed,
        ego=np.array([0.0, 0.0, 0.0, speed]), expert_future=np.column_stack(
            [speed * 0.2 * np.arange(1, FUTURE_STEPS + 1), np.zeros(FUTURE_STEPS), np.zeros(FUTURE_STEPS)]),
        buckets=["lateral_control"] if turn else [], route=np.column_stack([x, np.zeros_like(x)]),
        lanes=lanes, lane_start=np.array([0, len(x), 2 * len(x)], np.int32),
    )  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("expert")
    with DatasetWriter(root, kind="expert", shard_frames=16) as w:
        for r in range(3):
            frames = [straight_frame(i, turn=[0.0, 2.0][i % 2]) for i in range(20)]
            w.add_segment(TakeoverSegment(f"r{r}", "expert", 0, f"r{r}", "grid", frames, np.zeros(20, bool)))
    return root


def test_bucket_weights_give_each_bucket_an_equal_share():
    frames = [straight_frame(i, 2.0 if i < 2 else 0.0) for i in range(10)]  # 2 tagged, 8 untagged
    p = bucket_weights(frames)
    assert p.sum() == pytest.approx(1.0)
    assert p[:2].sum() == pytest.approx(0.5) and p[2:].sum() == pytest.approx(0.5)
    p = bucket_weights(frames, {"lateral_control": 3.0})
    assert p[:2].sum() == pytest.approx(0.75)
    # standing while the expert wants to go: the derived bucket that fights imitation's inertia
    go = straight_frame(0, 0.0, speed=0.0)
    go.target_speed = 5.0  # stands, the expert wants to go
    wait = straight_frame(1, 0.0, speed=0.0)  # stands, the expert stays
    p = bucket_weights([go, wait, *frames[2:]], {"moving_off": 2.0})
    assert p[0] > 10 * p[1] and p[0] == pytest.approx(2.0 / 3.0)
    # rolling slowly while the expert's waypoints speed up: moving off too; cruising is not
    t = 0.25 * np.arange(1, 11)
    pulling = straight_frame(2, 0.0, speed=0.8)
    pulling.speed_waypoints = np.column_stack([0.8 * t + 1.0 * t**2, np.zeros(10)])
    assert derived_tags(pulling) == ["moving_off"]
    assert derived_tags(straight_frame(3, 0.0, speed=0.8)) == []
    assert derived_tags(straight_frame(4, 0.0, speed=8.0)) == []
    with pytest.raises(DataError, match="unknown buckets"):
        bucket_weights(frames, {"wobble": 1.0})


def test_batches_carry_masks_and_action_dreaming_samples(dataset):
    bank = FrameBank.load([dataset], progress=False)
    assert len(bank) == 60 and bank.images.shape == (60, 3, 32, 64)
    builder = BatchBuilder(bank, dream_share=1.0, seed=0)
    batch = builder.build(range(16))
    assert batch["dreamed"].any()
    for k in np.flatnonzero(batch["dreamed"].numpy()):
        assert batch["instruction"][k] and batch["mode"][k] in ("safety", "instruction_following")
        assert batch["language"][k].startswith(("Following the instruction", "Not following"))
    plain = BatchBuilder(bank, dream_share=0.0).build([0, 1])
    one = bank.observation(1)  # a policy's observation of one frame: the batch's fields
    for key in ("image", "speed", "target_points", "command"):
        torch.testing.assert_close(one[key], plain[key][1:2])
    assert plain["instruction"] == ["", ""] and plain["has_path"].all()
    torch.testing.assert_close(plain["path"][1], torch.from_numpy(bank.frames[1].path).float())


def test_commentary_dreams_speak_the_dreamed_speed_action(dataset):
    bank = FrameBank.load([dataset], progress=False)
    idx = np.arange(60).repeat(4)
    batch = BatchBuilder(bank, dream_share=0.0, commentary_dream_share=1.0, seed=0).build(idx)
    dreamed = batch["dreamed"].numpy()
    speaks = np.array([spoken_speed_action(bank.frames[i].language) is not None for i in idx])
    assert (dreamed == speaks).all()  # every frame with a speed sentence; "Turn left." has none
    said, lane_changes = set(), 0
    for k in np.flatnonzero(dreamed):
        text = batch["language"][k]
        assert batch["instruction"][k] == batch["mode"][k] == ""
        assert batch["language_weight"][k] == 0.0  # given, not learnt: the dreamed action may be unsafe
        # the frame's route sentence, or a change to the left lane (the only other) on a path that takes it
        route = text.partition(". ")[0]
        if route in ROUTE_PHRASES[RouteAction.CHANGE_LANE_LEFT]:
            assert batch["path"][k, -1, 1] > 2.5
            lane_changes += 1
        else:
            assert route == "Follow the route" and abs(float(batch["path"][k, -1, 1])) < 0.5
        action = spoken_speed_action(text)
        said.add(action)
        # the target is the dreamed future the commentary speaks of
        wps = batch["speed_waypoints"][k].numpy()
        end_speed = float(np.linalg.norm(wps[-1] - wps[-2])) / 0.25
        speed = bank.frames[idx[k]].speed
        if action == SpeedAction.ACCELERATE:
            assert end_speed > speed + 0.5
        elif action in (SpeedAction.DECELERATE, SpeedAction.STOP):
            assert end_speed < speed - 0.5
        else:
            assert action == SpeedAction.KEEP and abs(end_speed - speed) < 0.5
    assert said == {SpeedAction.ACCELERATE, SpeedAction.KEEP, SpeedAction.DECELERATE, SpeedAction.STOP}
    assert lane_changes > 5
    rest = np.flatnonzero(~dreamed)
    assert (batch["language_weight"][rest] == 1.0).all()
    assert all(batch["language"][k] == bank.frames[idx[k]].language for k in rest)
    # mixed with Action Dreaming: both kinds, each at about its share
    both = BatchBuilder(bank, dream_share=0.3, commentary_dream_share=0.3, seed=1).build(idx)
    instructed = np.array([bool(t) for t in both["instruction"]])
    spoken = both["dreamed"].numpy() & ~instructed
    assert 0.2 < instructed.mean() < 0.4 and 0.1 < spoken.mean() < 0.3
    weight = both["language_weight"].numpy()
    assert (weight[instructed] == 1.0).all() and (weight[spoken] == 0.0).all()
    with pytest.raises(DataError, match="commentary_dream_share must be at most 1"):
        BatchBuilder(bank, dream_share=0.6, commentary_dream_share=0.6)
    with pytest.raises(PretrainError, match="commentary_dream_share must be in"):
        PretrainConfig.from_dict({"train": {"commentary_dream_share": -0.5}})
    with pytest.raises(PretrainError, match="commentary_dream_share applies to the VLA"):
        PretrainConfig.from_dict({"policy": {"architecture": "planner"},
                                  "train": {"dream_share": 0.0, "commentary_dream_share": 0.5}})  # fmt: skip


def test_commentary_dropout_leaves_out_the_commentary_of_recorded_frames(dataset):
    bank = FrameBank.load([dataset], progress=False)
    assert all(f.language for f in bank.frames)
    idx = np.arange(60).repeat(4)
    none = BatchBuilder(bank, dream_share=0.0, commentary_dropout=1.0).build(idx)
    assert none["language"] == [""] * len(idx) and none["has_path"].all()  # the waypoints stay
    half = BatchBuilder(bank, dream_share=0.5, commentary_dropout=0.5, seed=2).build(idx)
    dreamed = half["dreamed"].numpy()
    empty = np.array([t == "" for t in half["language"]])
    assert not empty[dreamed].any()  # an Action Dreaming answer is what the sample teaches: kept
    assert 0.35 < empty[~dreamed].mean() < 0.65
    kept = [k for k in np.flatnonzero(~dreamed & ~empty)]
    assert all(half["language"][k] == bank.frames[idx[k]].language for k in kept)
    with pytest.raises(DataError, match="commentary_dropout"):
        BatchBuilder(bank, commentary_dropout=-0.1)
    with pytest.raises(PretrainError, match="commentary_dropout must be in"):
        PretrainConfig.from_dict({"train": {"commentary_dropout": 2.0}})
    with pytest.raises(PretrainError, match="commentary_dropout applies to the VLA"):
        PretrainConfig.from_dict({"policy": {"architecture": "planner"},
                                  "train": {"commentary_dropout": 0.5}})  # fmt: skip


def test_bank_rewrites_the_commentary_in_canonical_phrasing(dataset):
    bank = FrameBank.load([dataset], progress=False)
    wordings = ("Keep following the lane. Hold the speed.", "Follow the road. Keep the current speed.")
    for k, f in enumerate(bank.frames[:10]):
        f.language = wordings[k % 2]
    bank.canonicalise_language()
    assert {f.language for f in bank.frames[:10]} == {"Follow the route. Maintain speed."}
    assert all(f.language == canonical_commentary(f.language) for f in bank.frames)


def test_bank_refuses_mixed_image_sizes(dataset, tmp_path):
    other = tmp_path / "big"
    with DatasetWriter(other, kind="expert") as w:
        f = straight_frame(0, 0.0)
        f.image = np.zeros((48, 64, 3), np.uint8)
        w.add_segment(TakeoverSegment("x", "expert", 0, "x", "grid", [f], np.zeros(1, bool)))
    with pytest.raises(DataError, match="image size"):
        FrameBank.load([dataset, other], progress=False)


def test_bank_keeps_images_encoded_and_decodes_them_per_batch(dataset):
    encoded = FrameBank.load([dataset], progress=False)
    decoded = FrameBank.load([dataset], progress=False, decode_images=True)
    assert isinstance(encoded.images, EncodedImages) and isinstance(decoded.images, np.ndarray)
    assert encoded.images.shape == decoded.images.shape == (60, 3, 32, 64)
    idx = np.array([5, 0, 59, 5])
    np.testing.assert_array_equal(encoded.images[idx], decoded.images[idx])
    np.testing.assert_array_equal(encoded.images[7], decoded.images[7])
    assert decoded.images[7].max() == 200  # real pixels, not an empty array
    assert sum(len(b) for b in encoded.images.blobs) < decoded.images.nbytes / 4
    batch = BatchBuilder(encoded, dream_share=0.0).build(idx)
    assert torch.equal(batch["image"], torch.from_numpy(decoded.images[idx]))
    assert all(f.image is None for f in encoded.frames + decoded.frames)  # one copy: the bank's


def test_damaged_stored_images_are_clear_errors(dataset, tmp_path):
    bank = FrameBank.load([dataset], progress=False)
    good = bank.images.blobs[3]
    bank.images.blobs[3] = good[: len(good) // 3]  # a truncated file: the header reads, the pixels do not
    with pytest.raises(DataError, match="bank frame 3 cannot be decoded"):
        BatchBuilder(bank, dream_share=0.0).build([0, 3])
    broken = tmp_path / "broken"
    with DatasetWriter(broken, kind="expert") as w:
        frame = straight_frame(0, 0.0)
        w.add_segment(TakeoverSegment("x", "expert", 0, "x", "grid", [frame], np.zeros(1, bool)))
    shard = next(broken.glob("*.parquet"))
    table = pq.read_table(shard)
    column = table.schema.get_field_index("image")
    pq.write_table(table.set_column(column, "image", pa.array([b"not an image"], pa.binary())), shard)
    with pytest.raises(DataError, match="frame 0 of route r1: the stored image is not a readable"):
        FrameBank.load([broken], progress=False)


def test_pretrain_writes_checkpoints_logs_and_resumes(dataset, tmp_path):
    cfg = PretrainConfig.from_dict({
        "policy": SMALL_VLA,
        "train": {"epochs": 1, "samples_per_epoch": 64, "batch_size": 8, "log_every": 2, "warmup_steps": 2,
                  "dream_share": 0.25, "lr": 3e-3},
    })  # fmt: skip
    run = pretrain([dataset], cfg, tmp_path / "run", progress=False)
    assert (run / "checkpoints" / "latest").read_text() == "epoch_001"
    assert (run / "training_curve.png").stat().st_size > 10_000
    assert any((run / "tensorboard").iterdir())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 8 and {"loss", "language", "path", "speed", "lr"} <= set(rows[0])
    with pytest.raises(PretrainError, match="already holds a training run"):
        pretrain([dataset], cfg, run, progress=False)
    first = load_policy(run / "checkpoints" / "epoch_001")
    # resume: a second epoch continues the step count and the schedule from the saved state
    cfg.train.epochs = 2
    pretrain([dataset], cfg, run, resume=True, progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 16 and rows[-1]["epoch"] == 2
    second = load_policy(run / "checkpoints" / "epoch_002")
    assert not torch.equal(first.queries, second.queries)
    assert (run / "checkpoints" / "latest").read_text() == "epoch_002"
    # the run folder and its `latest` pointer load the newest checkpoint too (checkpoint:PATH accepts both)
    for path in (run, run / "checkpoints" / "latest"):
        assert torch.equal(load_policy(path).queries, second.queries)
    (run / "checkpoints" / "latest").write_text("epoch_009")
    with pytest.raises(CheckpointError, match="points to epoch_009, which does not exist"):
        load_policy(run)


def test_sigterm_stops_pretraining_with_a_checkpoint_that_resumes(dataset, tmp_path):
    """`takeover pretrain` on SIGTERM (a scheduler's preemption): the step ends, a partial checkpoint is
    written, exit status 143, and `--resume` continues from it."""
    import os
    import signal
    import subprocess
    import sys

    import yaml

    cfg = {"policy": SMALL_VLA, "train": {"epochs": 1000, "samples_per_epoch": 32, "batch_size": 8}}
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "takeover.cli", "pretrain", "--data", str(dataset),
           "--config", str(cfg_file), "--out", str(run)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = child.stdout.readline()  # "N frames, M trainable parameters, ...": the loop starts next
        assert "trainable parameters" in line, child.stderr.read()
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 143, err
    assert "stopped from outside" in out and "--resume" in err
    name = (run / "checkpoints" / "latest").read_text()
    assert name.endswith("_partial") and load_policy(run).architecture == "vla"
    steps = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    stop = threading.Event()
    stop.set()  # resume, stopped again after one step: the step count goes on from the checkpoint
    small = PretrainConfig.from_dict(cfg)
    pretrain([dataset], small, run, resume=True, progress=False, stop=stop)
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == steps + 1


def test_sigterm_while_loading_the_data_exits_at_once(dataset, tmp_path, monkeypatch):
    """Loading 100k frames takes minutes, longer than a scheduler waits after its SIGTERM: `takeover
    pretrain` then exits at once (status 143) instead of after loading and a first step."""
    import os
    import signal

    import yaml

    import learner.data

    def signalled_midway(path):  # the dataset sends the SIGTERM itself after its first record
        ds = open_dataset(path)
        records = ds.iter_records

        def iter_records(stride, **kwargs):
            for k, rec in enumerate(records(stride, **kwargs)):
                if k == 1:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield rec

        ds.iter_records = iter_records
        return ds

    monkeypatch.setattr(learner.data, "open_dataset", signalled_midway)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump({"policy": SMALL_VLA, "train": {"epochs": 1, "batch_size": 8}}))
    run = tmp_path / "run"
    res = CliRunner().invoke(
        app, ["pretrain", "--data", str(dataset), "--config", str(cfg_file), "--out", str(run)]
    )
    assert res.exit_code == 143, res.output
    assert "while loading the data: nothing was trained" in res.output
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the command


def test_resume_continues_an_interrupted_epoch_at_the_next_batch(dataset, tmp_path):
    train = {"epochs": 1, "samples_per_epoch": 64, "batch_size": 8, "log_every": 1}
    cfg = PretrainConfig.from_dict({"policy": SMALL_VLA, "train": train})
    stop = threading.Event()
    stop.set()  # stopped after its first step, as by max_minutes or SIGTERM
    run = pretrain([dataset], cfg, tmp_path / "run", progress=False, stop=stop)
    assert (run / "checkpoints" / "latest").read_text() == "epoch_001_partial"
    pretrain([dataset], cfg, run, resume=True, progress=False)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # the epoch's other 7 batches, not all 8 again
    assert (run / "checkpoints" / "latest").read_text() == "epoch_001"


def test_weight_average_follows_the_trained_weights_with_its_decay():
    trained, frozen = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1)
    frozen.requires_grad_(False)
    model = torch.nn.Sequential(trained, frozen)
    with torch.no_grad():
        trained.weight.zero_()
    ema = WeightAverage(model, 0.9)
    assert len(ema.shadow) == 1  # frozen weights do not change: nothing to average
    expected = torch.zeros(1, 2)
    for k in range(30):
        with torch.no_grad():
            trained.weight.fill_(k + 1.0)
        d = min(0.9, (2.0 + k) / (11.0 + k))  # the first updates forget quickly
        expected = d * expected + (1 - d) * (k + 1.0)
        ema.update()
    torch.testing.assert_close(ema.shadow[0], expected)
    with ema.applied():
        torch.testing.assert_close(trained.weight.detach(), expected)
    assert torch.equal(trained.weight.detach(), torch.full((1, 2), 30.0))  # the trained weights are back
    again = WeightAverage(model, 0.9)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 30 and torch.equal(again.shadow[0], ema.shadow[0])
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage(model, 1.0)


def test_weight_average_checkpoints_hold_the_average_and_resume_is_exact(dataset, tmp_path):
    """With `ema_decay` the checkpoints hold the average; a run stopped after an epoch and resumed ends
    where an uninterrupted one does (the train state keeps the trained weights and the average)."""
    train = {"epochs": 2, "samples_per_epoch": 32, "batch_size": 8, "lr": 3e-3, "dream_share": 0.0,
             "ema_decay": 0.9}  # fmt: skip
    whole = pretrain([dataset], PretrainConfig.from_dict({"policy": SMALL_VLA, "train": train}),
                     tmp_path / "whole", progress=False)  # fmt: skip
    saved = torch.load(whole / STATE_FILE, weights_only=False)
    model = load_policy(whole)
    params = [p for p in model.parameters() if p.requires_grad]
    for p, s in zip(params, saved["ema"]["shadow"], strict=True):
        assert torch.equal(p.detach(), s)
    assert not all(torch.equal(p.detach(), t) for p, t in zip(params, saved["trained"], strict=True))
    assert saved["ema"]["updates"] == 8
    cfg = PretrainConfig.from_dict({"policy": SMALL_VLA, "train": dict(train, epochs=1)})
    split = pretrain([dataset], cfg, tmp_path / "split", progress=False)
    cfg.train.epochs = 2
    pretrain([dataset], cfg, split, resume=True, progress=False)
    resumed = torch.load(split / STATE_FILE, weights_only=False)
    for a, b in zip(saved["trained"] + saved["ema"]["shadow"], resumed["trained"] + resumed["ema"]["shadow"],
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b)
    with pytest.raises(PretrainError, match="ema_decay must be in"):
        PretrainConfig.from_dict({"train": {"ema_decay": 1.0}})


def test_pretrain_trains_the_compact_planner_too(dataset, tmp_path):
    cfg = PretrainConfig.from_dict({
        "policy": {
            "architecture": "planner",
            "config": {"image_size": [32, 64], "channels": [8, 16], "n_modes": 4},
        },
        "train": {"epochs": 1, "samples_per_epoch": 32, "batch_size": 8, "warmup_steps": 1},
    })  # fmt: skip
    run = pretrain([dataset], cfg, tmp_path / "planner", progress=False)
    model = load_policy(run / "checkpoints" / "epoch_001")
    assert model.architecture == "planner"
    # anchors were fitted to the data's trajectories (k-means), not left at the defaults
    assert model.anchors[:, 1:40:2].abs().max() > 0.5


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[10:])) and f[-1] == pytest.approx(0.1, abs=1e-3)


def test_time_budget_brings_the_schedule_to_its_floor():
    assert budget_step(300, 1000, 5.0, 0.0) == 300  # no budget: steps only
    assert budget_step(300, 1000, 5.0, 20.0) == 300  # on time
    assert budget_step(300, 1000, 10.0, 20.0) == 500  # slower than planned: half the budget used
    assert lr_factor(budget_step(900, 1000, 20.0, 20.0), 1000, 10, 0.1) == pytest.approx(0.1)


def test_bank_stride_keeps_every_kth_frame_of_each_segment(dataset):
    full = FrameBank.load([dataset], progress=False)
    half = FrameBank.load([dataset], progress=False, stride=2)
    assert len(full) == 60 and len(half) == 30 == open_dataset(dataset).count(2)
    assert [f.tick for f in half.frames[:10]] == [0, 8, 16, 24, 32, 40, 48, 56, 64, 72]  # segment r0 ...
    assert half.frames[10].tick == 0 and half.frames[10].route_id == "r1"  # ... then r1 from its start
    np.testing.assert_array_equal(half.images[3], full.images[6])


def test_frame_rate_gives_each_dataset_its_own_stride(dataset, tmp_path):
    # takeover data recorded every 20 Hz tick next to expert data at 5 Hz (ticks 4 apart)
    fast = tmp_path / "takeover_20hz"
    with DatasetWriter(fast, kind="takeover", shard_frames=16) as w:
        frames = [straight_frame(i, 0.0) for i in range(24)]
        for i, f in enumerate(frames):
            f.tick = 100 + i
        w.add_segment(TakeoverSegment("t0", "follow", 104, "r9", "grid", frames, np.arange(24) < 4))
    assert open_dataset(dataset).frame_interval() == 4 and open_dataset(fast).frame_interval() == 1
    assert rate_stride(4, 2.5) == 2 and rate_stride(1, 2.5) == 8 and rate_stride(4, 10.0) == 1
    bank = FrameBank.load([dataset, fast], progress=False, hz=2.5)
    assert len(bank) == 30 + 3
    ticks = [f.tick for f in bank.frames[30:]]
    assert ticks == [100, 108, 116] and bank.pre_takeover[30:].tolist() == [True, False, False]
    # takeover data at its own, higher rate; expert data stays at frame_hz (or at frame_stride)
    dense = FrameBank.load([dataset, fast], progress=False, hz=2.5, takeover_hz=5.0)
    assert len(dense) == 30 + 6 and [f.tick for f in dense.frames[30:]] == [100, 104, 108, 112, 116, 120]
    strided = FrameBank.load([dataset, fast], progress=False, stride=3, takeover_hz=10.0)
    assert len(strided) == open_dataset(dataset).count(3) + 12
    # takeover frames get their share of the draws, each side keeping its bucket weighting
    assert bank.from_takeover.tolist() == [False] * 30 + [True] * 3
    probs = bucket_weights(bank.frames)
    mixed = with_takeover_share(probs, bank.from_takeover, 0.25)
    assert mixed[30:].sum() == pytest.approx(0.25) and mixed.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(mixed[:30] / mixed[:30].sum(), probs[:30] / probs[:30].sum())
    expert_only = FrameBank.load([dataset], progress=False)
    with pytest.raises(DataError, match="no --data folder holds takeover data"):
        with_takeover_share(bucket_weights(expert_only.frames), expert_only.from_takeover, 0.2)
    with pytest.raises(PretrainError, match="takeover_share must be in"):
        PretrainConfig.from_dict({"train": {"takeover_share": 1.5}})
    with pytest.raises(PretrainError, match="alternative to frame_stride"):
        PretrainConfig.from_dict({"train": {"frame_stride": 2, "frame_hz": 2.5}})
    with pytest.raises(PretrainError, match="takeover_frame_hz must be >= 0"):
        PretrainConfig.from_dict({"train": {"takeover_frame_hz": -1}})


def test_batches_carry_the_bev_occupancy_of_each_frame(dataset):
    from policies.bev import BEV_SHAPE

    bank = FrameBank.load([dataset], progress=False)
    f = bank.frames[0]
    f.agent_kind = np.array([0], np.int8)
    f.agent_box = np.array([[11.0, 0.0, 0.0, 2.4, 1.0]])  # a car 11 m ahead
    assert "bev" not in BatchBuilder(bank).build([0, 1])  # only for a VLA with the head
    batch = BatchBuilder(bank, bev=True).build([0, 1])
    assert batch["bev"].shape == (2, *BEV_SHAPE)
    assert batch["bev"][0, 0].sum() == 6 and batch["bev"][1].sum() == 0


def test_pretrain_trains_the_bev_head_when_configured(dataset, tmp_path):
    policy = {**SMALL_VLA, "config": {**SMALL_VLA["config"], "bev_head": True}}
    cfg = PretrainConfig.from_dict({
        "policy": policy, "train": {"epochs": 1, "samples_per_epoch": 16, "batch_size": 8, "log_every": 1},
    })  # fmt: skip
    run = pretrain([dataset], cfg, tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("bev" in r for r in rows)
    assert load_policy(run / "checkpoints" / "epoch_001").bev_head is not None


def test_bad_configs_and_data_are_clear_errors(tmp_path, dataset):
    with pytest.raises(PretrainError, match=r"unknown keys under 'train': epoch"):
        PretrainConfig.from_dict({"train": {"epoch": 3}})
    with pytest.raises(PretrainError, match=r"frame_stride must be a positive integer"):
        PretrainConfig.from_dict({"train": {"frame_stride": 0}})
    with pytest.raises(PretrainError, match=r"unknown train.loss_weights waypoints"):
        PretrainConfig.from_dict({"train": {"loss_weights": {"waypoints": 2.0}}})
    planner_weighted = {"policy": {"architecture": "planner"}, "train": {"loss_weights": {"path": 2.0}}}
    with pytest.raises(PretrainError, match=r"applies to the VLA"):
        PretrainConfig.from_dict(planner_weighted)
    with pytest.raises(PretrainError, match=r"policy\.architecture"):
        PretrainConfig.from_dict({"policy": {"architecture": "diffusion"}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(PretrainError, match="not valid YAML"):
        PretrainConfig.load(bad)
    runner = CliRunner()
    res = runner.invoke(app, ["pretrain", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "nothing" in res.output
    res = runner.invoke(app, ["pretrain", "--data", str(dataset), "--config", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "missing.yaml" in res.output


def test_shipped_pretrain_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    vla = PretrainConfig.load(root / "pretrain_tiny_vla.yaml")
    assert vla.policy["architecture"] == "vla" and vla.train.max_minutes == 20
    assert vla.train.bucket_weights["moving_off"] > 1
    planner = PretrainConfig.load(root / "pretrain_planner.yaml")
    assert planner.policy["architecture"] == "planner"


def test_camera_history_pairs_each_frame_with_its_drive_earlier_image(dataset, tmp_path):
    # three drives of 20 frames 4 ticks apart (5 Hz); every second one kept: 8 ticks apart
    half = FrameBank.load([dataset], progress=False, stride=2)
    ticks = np.array([f.tick for f in half.frames])
    prev = half.previous_indices(8)  # 0.4 s
    assert prev[0] == 0 and prev[10] == 10  # the first frame of a drive has only its own image
    np.testing.assert_array_equal(prev[1:10], np.arange(9))
    assert (half.segment[prev] == half.segment).all()  # never an image of another drive
    assert ticks[half.previous_indices(10)[2]] == 8  # between two frames: the nearest earlier one
    np.testing.assert_array_equal(half.previous_indices(0), np.arange(len(half)))
    # a batch carries the image of the previous index (images numbered by their bank index here)
    images = np.broadcast_to(np.arange(len(half), dtype=np.uint8)[:, None, None, None], (len(half), 3, 2, 2))
    numbered = FrameBank(half.frames, half.pre_takeover, images, segment=half.segment)
    batch = BatchBuilder(numbered, history_ticks=8).build([3, 10, 15])
    assert batch["previous_image"][:, 0, 0, 0].tolist() == [2, 10, 14]
    assert "previous_image" not in BatchBuilder(numbered).build([3])
    # past-motion dropout: that share of the samples sees the current image twice, as at a standstill
    assert BatchBuilder(numbered, history_ticks=8, history_dropout=1.0).build([3, 10, 15])[
        "previous_image"][:, 0, 0, 0].tolist() == [3, 10, 15]  # fmt: skip
    idx = np.arange(1, 10).repeat(40)
    half_dropped = BatchBuilder(numbered, history_ticks=8, history_dropout=0.5, seed=1).build(idx)
    seen = half_dropped["previous_image"][:, 0, 0, 0].numpy()
    assert 0.4 < (seen == idx).mean() < 0.6 and (seen[seen != idx] == idx[seen != idx] - 1).all()
    with pytest.raises(PretrainError, match="history_dropout"):
        PretrainConfig.from_dict({"train": {"history_dropout": 1.5}})


def test_pretrain_trains_a_vla_with_camera_history(dataset, tmp_path):
    policy = {**SMALL_VLA, "config": {**SMALL_VLA["config"], "vision": {**SMALL_VLA["config"]["vision"],
                                                                     "history_s": 0.4}}}  # fmt: skip
    cfg = PretrainConfig.from_dict({
        "policy": policy, "train": {"epochs": 1, "samples_per_epoch": 16, "batch_size": 8, "log_every": 1},
    })  # fmt: skip
    run = pretrain([dataset], cfg, tmp_path / "run", progress=False)
    assert load_policy(run / "checkpoints" / "epoch_001").history_ticks == 8


def test_pretrain_starts_from_a_checkpoint_with_a_fresh_schedule(dataset, tmp_path):
    """`policy.checkpoint` / `--init`: the checkpoint's weights and architecture, a new step count and
    schedule; with a zero learning rate the new run's checkpoint is the one it started from."""
    train = {"epochs": 1, "samples_per_epoch": 32, "batch_size": 8, "warmup_steps": 1, "lr": 3e-3}
    first = pretrain([dataset], PretrainConfig.from_dict({"policy": SMALL_VLA, "train": train}),
                     tmp_path / "a", progress=False)  # fmt: skip
    start = load_policy(first)
    cfg = PretrainConfig.from_dict({"policy": {"checkpoint": str(first)}, "train": {**train, "lr": 0.0}})
    assert cfg.policy == {"architecture": "vla", "checkpoint": str(first / "checkpoints" / "epoch_001")}
    still = pretrain([dataset], cfg, tmp_path / "b", progress=False)
    rows = [json.loads(x) for x in (still / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and rows[0]["lr"] == 0.0  # its own steps and schedule
    kept = dict(load_policy(still).named_parameters())  # (batch-norm statistics move in train mode)
    assert all(torch.equal(v, kept[k]) for k, v in start.named_parameters())
    # with a learning rate it trains on from there: the same architecture, other weights
    cli = CliRunner().invoke(app, ["pretrain", "--data", str(dataset), "--init", str(first), "--epochs", "1",
                                   "--out", str(tmp_path / "c")])  # fmt: skip
    assert cli.exit_code == 0, cli.output
    tuned = load_policy(tmp_path / "c")
    assert tuned.config == start.config and not torch.equal(tuned.queries, start.queries)
    recorded = str(first / "checkpoints" / "epoch_001")
    assert yaml.safe_load((tmp_path / "c" / "config.yaml").read_text())["policy"]["checkpoint"] == recorded
    # resumed without --init, the run still records the checkpoint it started from
    cli = CliRunner().invoke(app, ["pretrain", "--data", str(dataset), "--resume", "--epochs", "2",
                                   "--out", str(tmp_path / "c")])  # fmt: skip
    assert cli.exit_code == 0, cli.output
    assert yaml.safe_load((tmp_path / "c" / "config.yaml").read_text())["policy"]["checkpoint"] == recorded


def test_starting_from_a_checkpoint_refuses_conflicts(dataset, tmp_path):
    train = {"epochs": 1, "samples_per_epoch": 16, "batch_size": 8, "warmup_steps": 1}
    planner = {"architecture": "planner",
               "config": {"image_size": [32, 64], "channels": [8, 16], "n_modes": 4}}  # fmt: skip
    run = pretrain([dataset], PretrainConfig.from_dict({"policy": planner, "train": train}), tmp_path / "p",
                   progress=False)  # fmt: skip
    with pytest.raises(PretrainError, match=r"holds a 'planner' policy, but policy.architecture is 'vla'"):
        PretrainConfig.from_dict({"policy": {"checkpoint": str(run), "architecture": "vla"}})
    with pytest.raises(PretrainError, match=r"leave out policy.preset"):
        PretrainConfig.from_dict({"policy": {"checkpoint": str(run), "preset": "tiny"}})
    with pytest.raises(CheckpointError, match="does not exist"):
        PretrainConfig.from_dict({"policy": {"checkpoint": str(tmp_path / "nowhere")}})
    vla_config = tmp_path / "vla.yaml"
    vla_config.write_text(yaml.safe_dump({"policy": SMALL_VLA, "train": train}))
    res = CliRunner().invoke(app, ["pretrain", "--data", str(dataset), "--init", str(run), "--config",
                                   str(vla_config), "--out", str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code == 2 and "holds a 'planner' policy" in res.output
    # a VLA checkpoint whose tokenizer lacks a word of the data's commentary
    from policies.tokenizer import train_label_tokenizer
    from policies.vla import VLA
    from policies.vla_config import VLAConfig

    narrow = train_label_tokenizer(n_states=0)  # the prompt and instruction words only
    assert narrow.unk_token_id in narrow("Follow the route. Turn left.")["input_ids"]
    VLA(VLAConfig.from_dict(SMALL_VLA["config"]), tokenizer=narrow).save(tmp_path / "narrow")
    cfg = PretrainConfig.from_dict({"policy": {"checkpoint": str(tmp_path / "narrow")}, "train": train})
    with pytest.raises(PretrainError, match="does not know"):
        pretrain([dataset], cfg, tmp_path / "n", progress=False)
