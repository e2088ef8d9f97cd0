"""The dataset format (envs.dataset) and bucket tags (envs.buckets) on constructed frames."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from envs.buckets import BUCKETS, bucket_tags, tag_frames
from envs.dataset import (
    MANIFEST,
    SCHEMA,
    SCHEMA_VERSION,
    DatasetError,
    DatasetWriter,
    FrameTorchDataset,
    frames_to_table,
    open_dataset,
    shard_files,
)
from envs.scene import AgentKind, RoadOption
from envs.segments import FUTURE_STEPS, Frame, TakeoverSegment


def make_local_map(rng: np.random.Generator, n_lanes: int) -> dict:
    """Random local-map fields: a route and `n_lanes` lanes of 1..5 points (CSR)."""
    sizes = rng.integers(1, 6, n_lanes)
    n = int(sizes.sum())
    return {
        "ego_extent": rng.uniform(0.5, 3.0, 2),
        "route": rng.normal(size=(int(rng.integers(0, 12)), 2)) * 100.0,
        "lanes": np.column_stack([rng.normal(size=(n, 2)) * 50.0, rng.uniform(1.0, 2.0, n)]),
        "lane_start": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32),
    }


def make_frame(
    rng: np.random.Generator, tick: int, n_agents: int = 3, image: bool = True, labels: bool = True
):
    fut = rng.normal(size=(n_agents, FUTURE_STEPS, 5))
    if n_agents:
        fut[0, 6:] = np.nan  # agent gone after 1.2 s
    return Frame(
        tick=tick,
        route_id="r7",
        town="Town03",
        image=rng.integers(0, 256, (16, 24, 3), dtype=np.uint8) if image else None,
        speed=float(rng.uniform(0, 10)),
        target_points=rng.normal(size=(2, 2)).astype(np.float32),
        command=int(RoadOption.LEFT),
        language=f"Turn left — tick {tick} ü",
        path=rng.normal(size=(20, 2)) if labels else None,
        speed_waypoints=rng.normal(size=(10, 2)) if labels else None,
        target_speed=float(rng.uniform(0, 10)) if labels else float("nan"),
        control=rng.uniform(size=3).astype(np.float32),
        driver="expert" if labels else "policy",
        policy_path=None if labels else rng.normal(size=(20, 2)),
        ego=rng.normal(size=4),
        agent_ids=[f"veh{i}" for i in range(n_agents)],
        agent_kind=np.arange(n_agents, dtype=np.int8),
        agent_box=rng.normal(size=(n_agents, 5)),
        agent_speed=rng.uniform(size=n_agents),
        agent_future=fut,
        expert_future=np.where(
            np.arange(FUTURE_STEPS)[:, None] > 7, np.nan, rng.normal(size=(FUTURE_STEPS, 3))
        ),
        buckets=["junction", "braking"] if tick % 2 else [],
        hazards=["vehicle"] if tick % 3 == 0 else [],
        cause="vehicle" if tick % 3 == 0 else "",
        **make_local_map(rng, n_lanes=tick % 4),  # some frames without lanes
    )


def make_segment(seed: int, n: int = 6, n_pre: int = 2, trigger: str = "follow", sid: str | None = None):
    rng = np.random.default_rng(seed)
    frames = [make_frame(rng, 100 + 5 * k, n_agents=k % 4, image=k != 1, labels=k >= n_pre) for k in range(n)]
    return TakeoverSegment(
        segment_id=sid or f"seg{seed}",
        trigger=trigger,
        trigger_tick=100 + 5 * n_pre,
        route_id="r7",
        town="Town03",
        frames=frames,
        pre_takeover=np.arange(n) < n_pre,
        info={"policy": "constant", "seed": seed, "nested": {"a": [1, 2.5, None]}},
    )


def assert_frames_equal(a: Frame, b: Frame) -> None:
    for name in Frame.__dataclass_fields__:
        va, vb = getattr(a, name), getattr(b, name)
        if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
            assert isinstance(va, np.ndarray) and isinstance(vb, np.ndarray), name
            assert va.shape == vb.shape, name
            assert va.dtype == vb.dtype, name
            np.testing.assert_array_equal(va, vb, err_msg=name)  # NaNs compare equal here
        elif isinstance(va, float) and np.isnan(va):
            assert isinstance(vb, float) and np.isnan(vb), name
        else:
            assert va == vb, name
            assert type(va) is type(vb), name


def assert_segments_equal(a: TakeoverSegment, b: TakeoverSegment) -> None:
    assert (a.segment_id, a.trigger, a.trigger_tick, a.route_id, a.town) == (
        b.segment_id,
        b.trigger,
        b.trigger_tick,
        b.route_id,
        b.town,
    )
    np.testing.assert_array_equal(a.pre_takeover, b.pre_takeover)
    assert a.info == b.info
    assert len(a.frames) == len(b.frames)
    for fa, fb in zip(a.frames, b.frames, strict=True):
        assert_frames_equal(fa, fb)


def test_round_trip_takeover_segments_lose_nothing(tmp_path):
    segs = [make_segment(s, n=4 + s, trigger=("follow", "collision", "restart")[s % 3]) for s in range(5)]
    with DatasetWriter(tmp_path, kind="takeover", shard_frames=10) as w:
        for s in segs:
            w.add_segment(s)
    assert len(shard_files(tmp_path)) >= 2  # several shards
    ds = open_dataset(tmp_path)
    assert ds.kind == "takeover"
    assert len(ds) == sum(len(s.frames) for s in segs)
    back = ds.segments()
    assert [s.segment_id for s in back] == [s.segment_id for s in segs]
    for a, b in zip(segs, back, strict=True):
        assert_segments_equal(a, b)
    # frame iteration restores the frames too, in order
    frames = list(ds.iter_frames())
    assert_frames_equal(frames[3], segs[0].frames[3])
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["kind"] == "takeover"
    assert sum(s["frames"] for s in manifest["shards"]) == len(ds)
    # defaults of a bare Frame (empty agents, None labels, no image) survive as well
    bare = TakeoverSegment(
        "bare",
        "expert",
        0,
        "r",
        "t",
        [Frame(0, "r", "t", None, 0.0, np.zeros((2, 2), np.float32), 4)],
        np.zeros(1, bool),
    )
    with DatasetWriter(tmp_path / "bare", kind="expert") as w:
        w.add_segment(bare)
    assert_segments_equal(bare, open_dataset(tmp_path / "bare").segments()[0])


def test_images_png_exact_and_jpeg_close(tmp_path):
    seg = make_segment(1, n=3)
    smooth = np.tile(np.linspace(0, 255, 24).astype(np.uint8)[None, :, None], (16, 1, 3))
    seg.frames[0].image = smooth
    with DatasetWriter(tmp_path / "j", kind="takeover", image_format="jpeg") as w:
        w.add_segment(seg)
    img = open_dataset(tmp_path / "j").segments()[0].frames[0].image
    assert img.shape == smooth.shape and img.dtype == np.uint8
    assert np.abs(img.astype(int) - smooth).mean() < 8
    table = pq.read_table(shard_files(tmp_path / "j")[0], columns=["image", "image_format"])
    assert table.column("image_format").to_pylist()[0] == "jpeg"
    assert table.column("image").to_pylist()[0][:2] == b"\xff\xd8"  # JPEG magic


def test_crash_mid_write_leaves_earlier_shards_readable_and_resume_appends(tmp_path, monkeypatch):
    w = DatasetWriter(tmp_path, kind="takeover", shard_frames=1)
    w.add_segment(make_segment(0))
    w.add_segment(make_segment(1))
    assert len(shard_files(tmp_path)) == 2

    # crash while writing the third shard: pyarrow dies half way through the file
    import envs.dataset as dsmod

    def dying_write(table, fh, **kw):
        fh.write(b"PAR1 partial garbage")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(dsmod.pq, "write_table", dying_write)
    with pytest.raises(KeyboardInterrupt):
        w.add_segment(make_segment(2))
    monkeypatch.undo()
    # a leftover temporary (as a hard kill would leave it) is ignored by readers
    (tmp_path / ".shard-00002.parquet.tmp").write_bytes(b"PAR1 partial garbage")
    ds = open_dataset(tmp_path)
    assert [s.segment_id for s in ds.segments()] == ["seg0", "seg1"]
    assert_segments_equal(ds.segments()[1], make_segment(1))

    # a crash between the shard rename and the manifest update: the shard is still found
    manifest_before = (tmp_path / MANIFEST).read_text()
    w2 = DatasetWriter(tmp_path, kind="takeover", shard_frames=1)
    w2.add_segment(make_segment(3))
    (tmp_path / MANIFEST).write_text(manifest_before)
    assert [s.segment_id for s in open_dataset(tmp_path).segments()] == ["seg0", "seg1", "seg3"]

    # resume: a new writer appends after the last shard, never overwrites, and knows the segment ids
    before = {p.name: p.read_bytes() for p in shard_files(tmp_path)}
    w3 = DatasetWriter(tmp_path, kind="takeover", shard_frames=100)
    assert w3.segment_ids == {"seg0", "seg1", "seg3"}
    with pytest.raises(ValueError, match="already"):
        w3.add_segment(make_segment(0))
    w3.add_segment(make_segment(4))
    w3.close()
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data
    assert [s.segment_id for s in open_dataset(tmp_path).segments()] == ["seg0", "seg1", "seg3", "seg4"]
    assert len(json.loads((tmp_path / MANIFEST).read_text())["shards"]) == 4
    with pytest.raises(DatasetError, match="takeover"):
        DatasetWriter(tmp_path, kind="expert")


def test_local_map_round_trip_and_validation(tmp_path):
    seg = make_segment(2, n=5)
    assert seg.frames[1].lane_start.tolist() != [0] and len(seg.frames[1].route)  # non-empty map
    assert any(len(f.lane_start) == 1 for f in seg.frames)  # and a frame without lanes
    with DatasetWriter(tmp_path / "ok", kind="takeover") as w:
        w.add_segment(seg)
    back = open_dataset(tmp_path / "ok").segments()[0]
    assert_segments_equal(seg, back)  # exact, dtypes included (lane_start int32)
    assert back.frames[1].lane_start.dtype == np.int32 and back.frames[1].lanes.dtype == np.float64
    bad = make_segment(3, n=2)
    bad.frames[1].lane_start = np.array([0, 2], np.int32)  # does not end at len(lanes)
    with pytest.raises(ValueError, match="lane_start"):
        frames_to_table([(bad, 0), (bad, 1)], "takeover")
    bad.frames[1].lane_start = np.array([0], np.int32)
    bad.frames[1].lanes = np.zeros((0, 3))
    bad.frames[1].route = np.zeros((4, 3))
    with pytest.raises(ValueError, match="route"):
        frames_to_table([(bad, 0), (bad, 1)], "takeover")


def write_version_1(root, segments: list[TakeoverSegment], kind: str = "takeover") -> None:
    """A dataset as schema version 1 wrote it: no local-map columns, version 1 in metadata and manifest."""
    with DatasetWriter(root, kind=kind) as w:
        for seg in segments:
            w.add_segment(seg)
    for shard in shard_files(root):
        table = pq.read_table(shard)
        table = table.drop_columns(["ego_extent", "route", "lanes", "lane_start"])
        meta = dict(table.schema.metadata)
        meta[b"takeover.schema_version"] = b"1"
        pq.write_table(table.replace_schema_metadata(meta), shard)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["schema_version"] = 1
    (root / MANIFEST).write_text(json.dumps(manifest))


def test_version_1_datasets_still_read_with_map_defaults(tmp_path):
    from takeover.data_cli import summarize_dataset

    segs = [make_segment(s, n=4) for s in range(2)]
    write_version_1(tmp_path, segs)
    assert pq.read_schema(shard_files(tmp_path)[0]).names == [
        n for n in SCHEMA.names if n not in ("ego_extent", "route", "lanes", "lane_start")
    ]
    ds = open_dataset(tmp_path)
    assert ds.schema_version == 1 and summarize_dataset(tmp_path)["schema_version"] == 1
    default = Frame(0, "r", "t", None, 0.0, np.zeros((2, 2), np.float32), 4)
    for a, b in zip(segs, ds.segments(), strict=True):
        for fa in a.frames:
            for name in ("ego_extent", "route", "lanes", "lane_start"):
                setattr(fa, name, getattr(default, name))
        assert_segments_equal(a, b)  # everything else as written; the map fields get their defaults
    f = ds.frames()[0]
    np.testing.assert_array_equal(f.ego_extent, [2.45, 1.06])
    assert f.route.shape == (0, 2) and f.lanes.shape == (0, 3) and f.lane_start.tolist() == [0]
    assert ds.torch_dataset(with_images=False)[0]["ego_extent"].tolist() == pytest.approx([2.45, 1.06])
    # new shards are never appended to a version-1 dataset, and versions do not mix
    with pytest.raises(DatasetError, match="schema version 1"):
        DatasetWriter(tmp_path, kind="takeover")
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(DatasetError, match="schema version 1"):
        DatasetWriter(tmp_path, kind="takeover")
    with DatasetWriter(tmp_path / "v2", kind="takeover") as w:
        w.add_segment(make_segment(5))
    os.link(shard_files(tmp_path / "v2")[0], tmp_path / "shard-00007.parquet")
    with pytest.raises(DatasetError, match="mixes"):
        open_dataset(tmp_path)


def test_unknown_schema_version_is_a_clear_error(tmp_path):
    with DatasetWriter(tmp_path, kind="expert") as w:
        w.add_segment(make_segment(0, trigger="expert"))
    shard = shard_files(tmp_path)[0]
    table = pq.read_table(shard)
    meta = dict(table.schema.metadata)
    meta[b"takeover.schema_version"] = b"99"
    pq.write_table(table.replace_schema_metadata(meta), shard)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    with pytest.raises(DatasetError, match="schema version 99"):
        open_dataset(tmp_path)
    manifest["schema_version"] = 99
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="version 99"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(tmp_path / "missing")
    os.remove(tmp_path / MANIFEST)
    pq.write_table(table.replace_schema_metadata({}), shard)
    with pytest.raises(DatasetError, match="not a takeover dataset"):
        open_dataset(tmp_path)


def test_torch_dataset_yields_tensors(tmp_path):
    import torch
    from torch.utils.data import DataLoader, Dataset

    segs = [make_segment(s, n=5) for s in range(3)]
    with DatasetWriter(tmp_path, kind="takeover", shard_frames=6) as w:
        for s in segs:
            w.add_segment(s)
    tds = open_dataset(tmp_path).torch_dataset()
    assert isinstance(tds, Dataset) and isinstance(tds, FrameTorchDataset)
    assert len(tds) == 15
    item = tds[8]  # segment 1, frame 3
    f = segs[1].frames[3]
    assert item["image"].dtype == torch.uint8 and tuple(item["image"].shape) == (3, 16, 24)
    assert torch.equal(item["image"], torch.from_numpy(f.image).permute(2, 0, 1))
    assert torch.allclose(item["path"], torch.from_numpy(f.path).float())
    assert bool(item["has_path"]) and not bool(item["pre_takeover"])
    pre = tds[5]  # segment 1, frame 0: pre-takeover, no action labels
    assert bool(pre["pre_takeover"]) and not bool(pre["has_path"]) and float(pre["path"].abs().sum()) == 0.0
    assert item["language"] == f.language and item["segment_id"] == "seg1"
    assert item["buckets"].dtype == torch.bool and item["buckets"].shape == (len(BUCKETS),)
    assert {BUCKETS[i] for i in torch.nonzero(item["buckets"]).flatten().tolist()} == set(f.buckets) & set(
        BUCKETS
    )
    assert f.buckets  # frame 3 of a segment: tick 115 -> ["junction", "braking"]
    # the default collate batches it (no images: frame 1 of each segment has none)
    loader = DataLoader(open_dataset(tmp_path).torch_dataset(with_images=False), batch_size=4)
    batch = next(iter(loader))
    assert batch["target_points"].shape == (4, 2, 2) and batch["speed"].dtype == torch.float32
    assert batch["path"].shape == (4, 20, 2) and batch["has_path"].tolist() == [False, False, True, True]


@pytest.mark.slow
def test_ray_data_reads_the_shards(tmp_path):
    ray = pytest.importorskip("ray")
    segs = [make_segment(s, n=4) for s in range(3)]
    with DatasetWriter(tmp_path, kind="takeover", shard_frames=4) as w:
        for s in segs:
            w.add_segment(s)
    (tmp_path / ".shard-00009.parquet.tmp").write_bytes(b"partial")  # ignored, as by every reader
    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        ds = ray.data.read_parquet(str(tmp_path))
        assert ds.count() == 12
        rows = sorted(
            ds.select_columns(["segment_id", "frame_index", "speed"]).take_all(),
            key=lambda r: (r["segment_id"], r["frame_index"]),
        )
        assert rows[5]["segment_id"] == "seg1" and rows[5]["frame_index"] == 1
        assert rows[5]["speed"] == segs[1].frames[1].speed
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------------------ buckets
def drive_frames(speeds, steer=0.0, command=int(RoadOption.LANEFOLLOW), every: int = 5, **kw) -> list[Frame]:
    """Frames every `every` ticks (4 Hz by default) with the given speeds and a straight path."""
    out = []
    for k, v in enumerate(speeds):
        path = np.stack([np.arange(1, 21, dtype=float), np.zeros(20)], axis=1)
        f = Frame(
            tick=k * every,
            route_id="r",
            town="t",
            image=None,
            speed=float(v),
            target_points=np.zeros((2, 2), np.float32),
            command=command,
            path=path,
            speed_waypoints=np.stack([v * 0.25 * np.arange(1, 11), np.zeros(10)], axis=1),
            target_speed=float(v),
            control=np.array([0.3, 0.0, steer], np.float32),
            **kw,
        )
        out.append(f)
    return out


def test_bucket_tags_on_constructed_sequences():
    # accelerating 0 -> 6 m/s in 2 s: acceleration; the first frames are a start from stop
    acc = drive_frames(np.linspace(0.0, 6.0, 9))
    tag_frames(acc)
    assert "acceleration" in acc[4].buckets and "braking" not in acc[4].buckets
    assert "start_from_stop" in acc[0].buckets and "stopped" in acc[0].buckets
    # braking 10 -> 2 m/s in 2 s
    brk = drive_frames(np.linspace(10.0, 2.0, 9))
    assert "braking" in bucket_tags(brk, 4) and "acceleration" not in bucket_tags(brk, 4)
    # cruising: no longitudinal tags; standing still without moving on: stopped, not start_from_stop
    cruise = drive_frames(np.full(9, 8.0))
    assert not {"acceleration", "braking", "stopped", "start_from_stop"} & set(bucket_tags(cruise, 4))
    still = drive_frames(np.zeros(9))
    for f in still:
        f.speed_waypoints = np.zeros((10, 2))
        f.target_speed = 0.0
    tags = bucket_tags(still, 4)
    assert "stopped" in tags and "start_from_stop" not in tags
    # steering / a curved path: lateral control; junction command; lane change command
    assert "lateral_control" in bucket_tags(drive_frames(np.full(3, 5.0), steer=0.3), 1)
    curved = drive_frames(np.full(3, 5.0))
    curved[1].path = np.stack([np.arange(1, 21.0), 0.02 * np.arange(1, 21.0) ** 2], axis=1)
    assert "lateral_control" in bucket_tags(curved, 1)
    assert "lateral_control" not in bucket_tags(cruise, 4)
    assert "junction" in bucket_tags(drive_frames([5, 5, 5], command=int(RoadOption.RIGHT)), 1)
    assert "junction" not in bucket_tags(cruise, 4)
    lc = bucket_tags(drive_frames([5, 5, 5], command=int(RoadOption.CHANGELANELEFT)), 1)
    assert "lane_change" in lc


def test_leading_object_buckets():
    def lead(kind: AgentKind, y: float = 0.0, cause: str = "") -> list[str]:
        fr = drive_frames([5.0, 5.0, 5.0], cause=cause)
        f = fr[1]
        f.ego = np.array([100.0, 50.0, np.pi / 2, 5.0])  # heading north: ego-frame x forward = world +y
        f.agent_ids = ["a", "b"]
        f.agent_kind = np.array([int(kind), int(AgentKind.VEHICLE)], np.int8)
        f.agent_box = np.array(
            [[100.0 - y, 62.0, np.pi / 2, 2.0, 1.0], [100.0, 20.0, 0.0, 2.0, 1.0]]
        )  # b behind
        f.agent_speed = np.zeros(2)
        f.agent_future = np.full((2, FUTURE_STEPS, 5), np.nan)
        return bucket_tags(fr, 1)

    assert "lead_vehicle" in lead(AgentKind.VEHICLE)
    assert "lead_vehicle" in lead(AgentKind.PARKED_VEHICLE)
    assert "lead_pedestrian" in lead(AgentKind.PEDESTRIAN)
    assert "lead_bicycle" in lead(AgentKind.BICYCLE)
    assert "lead_static" in lead(AgentKind.CONE)
    # beside the path (6 m to the side) or behind: no leading object
    assert not [t for t in lead(AgentKind.VEHICLE, y=6.0) if t.startswith("lead_")]
    # the expert's cause names lights and signs, which are not agents
    assert "lead_light" in lead(AgentKind.VEHICLE, y=6.0, cause="red_light")
    assert "lead_sign" in lead(AgentKind.VEHICLE, y=6.0, cause="stop_sign")
