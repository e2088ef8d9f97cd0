"""The on-disk format of driving data: Parquet shards of `Frame`s, for expert driving and takeovers alike.

Layout of a dataset folder:
- `shard-00000.parquet`, `shard-00001.parquet`, ...: one row per recorded frame (columns in `SCHEMA`),
  with the segment it belongs to (`segment_id`, `trigger`, `trigger_tick`, `pre_takeover`,
  `frame_index`, `num_frames`, `segment_info` as JSON), the observation (camera image as PNG or JPEG
  bytes), the labels, the scene snapshot and the local map (`ego_extent`, `route`, `lanes`,
  `lane_start`; see `envs.segments`). Fixed-shape arrays are fixed-size lists (optional ones: lists of
  that size, null = `None`), per-agent arrays and the route / lane points are lists of fixed-size lists,
  `lane_start` a list of int32. The Parquet schema metadata carries `takeover.schema_version` and
  `takeover.kind` ("expert" | "takeover"). Any Parquet reader (pyarrow, pandas,
  `ray.data.read_parquet(dir)`) reads the shards directly.
- `manifest.json`: the index (schema version, kind, per shard: file, frames, segments, routes, triggers).

Schema versions: 2 (written now) added the local map columns to version 1. Version-1 datasets still
read, their frames getting the `Frame` defaults for the map fields (no route, no lanes, the default ego
size); a writer appends only to a dataset of the current version.

Writes are atomic per shard: a shard is written under a hidden temporary name (`.shard-*.parquet.tmp`),
fsynced, then hard-linked to its final name (which fails rather than overwrite an existing shard) and
the temporary removed; the manifest is replaced the same way (temp + fsync + rename). A crash leaves at
most a hidden temporary file, which readers ignore, and every earlier shard readable. The reader lists
the shard files themselves, so a shard whose manifest update was lost is still read. A writer opened on
an existing dataset appends new shards after the last one (resume).

Segments are never split across shards: `shard_frames` is the frame count at which buffered segments
are flushed. Arrays come back in their canonical dtypes: `target_points` and `control` float32,
`agent_kind` int8, `lane_start` int32, every other array float64 (what the environment and agents
produce). `info` must be JSON-serialisable (JSON turns tuples into lists).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch.utils.data import Dataset as TorchDataset

from envs.buckets import BUCKETS
from envs.segments import FUTURE_STEPS, Frame, TakeoverSegment

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no local map columns (ego_extent, route, lanes, lane_start)
KINDS = ("expert", "takeover")
MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.parquet$")
_META_VERSION = b"takeover.schema_version"
_META_KIND = b"takeover.kind"


class DatasetError(ValueError):
    """A folder that is not a readable takeover dataset (missing, wrong kind, unknown schema version)."""


# name -> (shape of one value, numpy dtype) for the fixed-shape array fields of `Frame`
_FIXED: dict[str, tuple[tuple[int, ...], type]] = {
    "target_points": ((2, 2), np.float32),
    "path": ((20, 2), np.float64),
    "speed_waypoints": ((10, 2), np.float64),
    "control": ((3,), np.float32),
    "policy_path": ((20, 2), np.float64),
    "ego": ((4,), np.float64),
    "expert_future": ((FUTURE_STEPS, 3), np.float64),
    "ego_extent": ((2,), np.float64),
}
_NULLABLE = {"path", "speed_waypoints", "policy_path"}


def _arrow(dtype: type) -> pa.DataType:
    return pa.float32() if dtype is np.float32 else pa.float64()


def _fsl(name: str) -> pa.DataType:
    """fixed_size_list for always-present arrays; a plain list (null or exactly the size) for the optional
    ones: Parquet (Arrow 23) refuses to write fixed-size lists with nulls between valid rows."""
    shape, dtype = _FIXED[name]
    if name in _NULLABLE:
        return pa.list_(_arrow(dtype))
    return pa.list_(_arrow(dtype), int(np.prod(shape)))


SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("segment_id", pa.string()),
        ("trigger", pa.string()),
        ("trigger_tick", pa.int64()),
        ("pre_takeover", pa.bool_()),
        ("frame_index", pa.int32()),
        ("num_frames", pa.int32()),
        ("segment_info", pa.string()),
        ("tick", pa.int64()),
        ("route_id", pa.string()),
        ("town", pa.string()),
        ("image", pa.binary()),
        ("image_format", pa.string()),
        ("speed", pa.float64()),
        ("target_points", _fsl("target_points")),
        ("command", pa.int32()),
        ("language", pa.string()),
        ("path", _fsl("path")),
        ("speed_waypoints", _fsl("speed_waypoints")),
        ("target_speed", pa.float64()),
        ("control", _fsl("control")),
        ("driver", pa.string()),
        ("policy_path", _fsl("policy_path")),
        ("ego", _fsl("ego")),
        ("agent_ids", pa.list_(pa.string())),
        ("agent_kind", pa.list_(pa.int8())),
        ("agent_box", pa.list_(pa.list_(pa.float64(), 5))),
        ("agent_speed", pa.list_(pa.float64())),
        ("agent_future", pa.list_(pa.list_(pa.float64(), FUTURE_STEPS * 5))),
        ("expert_future", _fsl("expert_future")),
        ("buckets", pa.list_(pa.string())),
        ("hazards", pa.list_(pa.string())),
        ("cause", pa.string()),
        # schema version 2: the local map
        ("ego_extent", _fsl("ego_extent")),
        ("route", pa.list_(pa.list_(pa.float64(), 2))),
        ("lanes", pa.list_(pa.list_(pa.float64(), 3))),
        ("lane_start", pa.list_(pa.int32())),
    ]
)
_MAP_COLUMNS = ("ego_extent", "route", "lanes", "lane_start")  # absent from version-1 shards


# ------------------------------------------------------------------------------------------ images
def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 90) -> bytes:
    """uint8 (H, W, 3) (or (H, W)) -> PNG (lossless) or JPEG bytes."""
    from PIL import Image

    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {img.dtype}")
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    else:
        raise ValueError(f"unknown image format {fmt!r} (png or jpeg)")
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB") if im.mode not in ("RGB", "L") else im).copy()


# -------------------------------------------------------------------------------- frames <-> table
def _check_shape(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(value)
    if a.shape != shape:
        raise ValueError(f"Frame.{name} has shape {a.shape}, expected {shape}")
    return a


def _fixed_column(name: str, values: list[np.ndarray | None]) -> pa.Array:
    shape, dtype = _FIXED[name]
    size = int(np.prod(shape))
    flat = np.zeros((len(values), size), dtype)
    mask = np.zeros(len(values), bool)
    for i, v in enumerate(values):
        if v is None:
            if name not in _NULLABLE:
                raise ValueError(f"Frame.{name} may not be None")
            mask[i] = True
        else:
            flat[i] = _check_shape(name, v, shape).astype(dtype).reshape(-1)
    if name in _NULLABLE:
        return pa.array([None if m else row for row, m in zip(flat, mask, strict=True)], type=_fsl(name))
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), size)


def _list_column(values: list[np.ndarray], inner: pa.DataType, width: int, dtype: type) -> pa.Array:
    """Per-frame (N_i, width) arrays -> list<fixed_size_list<width>> (width 0 = list of scalars)."""
    offsets = np.zeros(len(values) + 1, np.int32)
    offsets[1:] = np.cumsum([len(v) for v in values])
    flat = (
        np.concatenate([np.asarray(v, dtype).reshape(-1) for v in values]) if values else np.zeros(0, dtype)
    )
    child: pa.Array = pa.array(flat, type=inner)
    if width:
        child = pa.FixedSizeListArray.from_arrays(child, width)
    return pa.ListArray.from_arrays(pa.array(offsets), child)


def _check_local_map(f: Frame) -> None:
    """Shapes of the route and lane arrays, and `lane_start` a valid CSR index into `lanes`."""
    route, lanes, start = np.asarray(f.route), np.asarray(f.lanes), np.asarray(f.lane_start)
    if route.ndim != 2 or route.shape[1] != 2:
        raise ValueError(f"Frame.route has shape {route.shape}, expected (R, 2)")
    if lanes.ndim != 2 or lanes.shape[1] != 3:
        raise ValueError(f"Frame.lanes has shape {lanes.shape}, expected (P, 3)")
    if (
        start.ndim != 1
        or len(start) == 0
        or start[0] != 0
        or start[-1] != len(lanes)
        or np.any(np.diff(start) < 0)
    ):
        raise ValueError(
            f"Frame.lane_start must rise from 0 to len(lanes) = {len(lanes)}, got {start.tolist()[:8]}..."
        )


def frames_to_table(
    rows: list[tuple[TakeoverSegment, int]], kind: str, image_format: str = "png"
) -> pa.Table:
    """(segment, frame index) rows -> an Arrow table with `SCHEMA` and the version metadata."""
    frames = [seg.frames[i] for seg, i in rows]
    for f in frames:
        n = len(f.agent_ids)
        for name, arr, tail in (
            ("agent_kind", f.agent_kind, ()),
            ("agent_box", f.agent_box, (5,)),
            ("agent_speed", f.agent_speed, ()),
            ("agent_future", f.agent_future, (FUTURE_STEPS, 5)),
        ):
            if np.shape(arr) != (n, *tail):
                raise ValueError(f"Frame.{name} has shape {np.shape(arr)}, expected {(n, *tail)}")
        _check_local_map(f)
    infos = {}
    for seg, _ in rows:
        if seg.segment_id not in infos:
            try:
                infos[seg.segment_id] = json.dumps(seg.info, sort_keys=True)
            except TypeError as exc:
                raise ValueError(f"segment {seg.segment_id}: info is not JSON-serialisable: {exc}") from None
    cols: dict[str, pa.Array | list] = {
        "kind": [kind] * len(rows),
        "segment_id": [seg.segment_id for seg, _ in rows],
        "trigger": [seg.trigger for seg, _ in rows],
        "trigger_tick": [int(seg.trigger_tick) for seg, _ in rows],
        "pre_takeover": [bool(seg.pre_takeover[i]) for seg, i in rows],
        "frame_index": [i for _, i in rows],
        "num_frames": [len(seg.frames) for seg, _ in rows],
        "segment_info": [infos[seg.segment_id] for seg, _ in rows],
        "tick": [int(f.tick) for f in frames],
        "route_id": [f.route_id for f in frames],
        "town": [f.town for f in frames],
        "image": [None if f.image is None else encode_image(f.image, image_format) for f in frames],
        "image_format": [None if f.image is None else image_format for f in frames],
        "speed": [float(f.speed) for f in frames],
        "command": [int(f.command) for f in frames],
        "language": [f.language for f in frames],
        "target_speed": [float(f.target_speed) for f in frames],
        "driver": [f.driver for f in frames],
        "agent_ids": [list(f.agent_ids) for f in frames],
        "agent_kind": _list_column([f.agent_kind for f in frames], pa.int8(), 0, np.int8),
        "agent_box": _list_column([f.agent_box for f in frames], pa.float64(), 5, np.float64),
        "agent_speed": _list_column([f.agent_speed for f in frames], pa.float64(), 0, np.float64),
        "agent_future": _list_column(
            [np.asarray(f.agent_future).reshape(len(f.agent_ids), FUTURE_STEPS * 5) for f in frames],
            pa.float64(),
            FUTURE_STEPS * 5,
            np.float64,
        ),
        "buckets": [list(f.buckets) for f in frames],
        "hazards": [list(f.hazards) for f in frames],
        "cause": [f.cause for f in frames],
        "route": _list_column([f.route for f in frames], pa.float64(), 2, np.float64),
        "lanes": _list_column([f.lanes for f in frames], pa.float64(), 3, np.float64),
        "lane_start": _list_column([f.lane_start for f in frames], pa.int32(), 0, np.int32),
    }
    for name in _FIXED:
        cols[name] = _fixed_column(name, [getattr(f, name) for f in frames])
    arrays = [cols[field.name] for field in SCHEMA]
    table = pa.Table.from_arrays(
        [
            a if isinstance(a, pa.Array) else pa.array(a, type=f.type)
            for a, f in zip(arrays, SCHEMA, strict=True)
        ],
        schema=SCHEMA,
    )
    return table.replace_schema_metadata(
        {_META_VERSION: str(SCHEMA_VERSION).encode(), _META_KIND: kind.encode()}
    )


def _fixed_to_numpy(col: pa.ChunkedArray | pa.Array, name: str) -> tuple[np.ndarray, np.ndarray]:
    shape, dtype = _FIXED[name]
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    size = int(np.prod(shape))
    valid = ~arr.is_null().to_numpy(zero_copy_only=False)
    out = np.zeros((len(arr), size), dtype)
    if isinstance(arr, pa.FixedSizeListArray):
        vals = arr.values.to_numpy(zero_copy_only=False)[arr.offset * size : (arr.offset + len(arr)) * size]
        out[:] = vals.reshape(len(arr), size)
    else:
        offsets = arr.offsets.to_numpy()
        vals = arr.values.to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(valid):
            row = vals[offsets[i] : offsets[i + 1]]
            if len(row) != size:
                raise DatasetError(f"column {name}: row {i} has {len(row)} values, expected {size}")
            out[i] = row
    return out.reshape(len(arr), *shape), valid


def _ragged_to_numpy(col: pa.ChunkedArray, tail: tuple[int, ...], dtype: type) -> list[np.ndarray]:
    arr = col.combine_chunks()
    offsets = arr.offsets.to_numpy()
    child = arr.values
    if tail:
        child = child.flatten()
    width = int(np.prod(tail)) if tail else 1
    flat = child.to_numpy(zero_copy_only=False).astype(dtype)
    return [flat[a * width : b * width].reshape(b - a, *tail).copy() for a, b in itertools.pairwise(offsets)]


def table_to_rows(table: pa.Table, decode_images: bool = True) -> list[dict]:
    """Decoded rows: segment fields plus a `frame` (`Frame`) per row. A table without the local map
    columns (schema version 1) gives frames with the `Frame` defaults for them. With `decode_images`
    off the frames carry no image and each row has the stored image bytes as `image_bytes` instead."""
    n = table.num_rows
    has_map = all(c in table.column_names for c in _MAP_COLUMNS)
    py = {
        name: table.column(name).to_pylist()
        for name in (
            "segment_id",
            "trigger",
            "trigger_tick",
            "pre_takeover",
            "frame_index",
            "num_frames",
            "segment_info",
            "tick",
            "route_id",
            "town",
            "image",
            "speed",
            "command",
            "language",
            "target_speed",
            "driver",
            "agent_ids",
            "buckets",
            "hazards",
            "cause",
            "kind",
        )
    }
    fixed = {
        name: _fixed_to_numpy(table.column(name), name)
        for name in _FIXED
        if has_map or name not in _MAP_COLUMNS
    }
    kinds = _ragged_to_numpy(table.column("agent_kind"), (), np.int8)
    boxes = _ragged_to_numpy(table.column("agent_box"), (5,), np.float64)
    speeds = _ragged_to_numpy(table.column("agent_speed"), (), np.float64)
    futures = _ragged_to_numpy(table.column("agent_future"), (FUTURE_STEPS * 5,), np.float64)
    if has_map:
        routes = _ragged_to_numpy(table.column("route"), (2,), np.float64)
        lanes = _ragged_to_numpy(table.column("lanes"), (3,), np.float64)
        starts = _ragged_to_numpy(table.column("lane_start"), (), np.int32)
    rows = []
    for i in range(n):
        arrays = {}
        for name, (vals, valid) in fixed.items():
            arrays[name] = vals[i].copy() if valid[i] else None
        local_map = {}
        if has_map:
            local_map = {
                "ego_extent": arrays["ego_extent"],
                "route": routes[i],
                "lanes": lanes[i],
                "lane_start": starts[i],
            }
        frame = Frame(
            tick=py["tick"][i],
            route_id=py["route_id"][i],
            town=py["town"][i],
            image=None if py["image"][i] is None or not decode_images else decode_image(py["image"][i]),
            speed=py["speed"][i],
            target_points=arrays["target_points"],
            command=py["command"][i],
            language=py["language"][i],
            path=arrays["path"],
            speed_waypoints=arrays["speed_waypoints"],
            target_speed=py["target_speed"][i],
            control=arrays["control"],
            driver=py["driver"][i],
            policy_path=arrays["policy_path"],
            ego=arrays["ego"],
            agent_ids=list(py["agent_ids"][i]),
            agent_kind=kinds[i],
            agent_box=boxes[i],
            agent_speed=speeds[i],
            agent_future=futures[i].reshape(-1, FUTURE_STEPS, 5),
            expert_future=arrays["expert_future"],
            buckets=list(py["buckets"][i]),
            hazards=list(py["hazards"][i]),
            cause=py["cause"][i],
            **local_map,
        )
        rows.append(
            {
                k: py[k][i]
                for k in (
                    "segment_id",
                    "trigger",
                    "trigger_tick",
                    "pre_takeover",
                    "frame_index",
                    "num_frames",
                    "segment_info",
                    "kind",
                )
            }
            | {"frame": frame, "image_bytes": None if decode_images else py["image"][i]}
        )
    return rows


# ------------------------------------------------------------------------------------------ files
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def shard_files(root: str | Path) -> list[Path]:
    """Completed shard files of a dataset folder, in order (temporaries are hidden and never match)."""
    root = Path(root)
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _SHARD_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def _versions_text() -> str:
    return " and ".join(str(v) for v in READABLE_VERSIONS)


def shard_meta(path: Path, schema: pa.Schema) -> tuple[str, int]:
    """(dataset kind, schema version) of a shard; DatasetError for a file of an unknown schema version."""
    meta = schema.metadata or {}
    if _META_VERSION not in meta:
        raise DatasetError(f"{path} is not a takeover dataset shard (no {_META_VERSION.decode()} metadata)")
    version = meta[_META_VERSION].decode()
    if version not in {str(v) for v in READABLE_VERSIONS}:
        raise DatasetError(
            f"{path} has dataset schema version {version}; this version of takeover reads versions "
            f"{_versions_text()} only (re-collect the data or use the matching takeover release)"
        )
    return meta.get(_META_KIND, b"").decode(), int(version)


def check_schema(path: Path, schema: pa.Schema) -> str:
    """The dataset kind of a shard; DatasetError for a file of an unknown schema version."""
    return shard_meta(path, schema)[0]


# ------------------------------------------------------------------------------------------ writer
class DatasetWriter:
    """Appends segments to a dataset folder as Parquet shards (see the module docstring).

    `add_segment(seg)` buffers a segment; once `shard_frames` frames are buffered they are written as
    one shard. `close()` (or leaving the `with` block) writes the rest. Expert driving is written as
    segments too (one per route or part of a route, `trigger="expert"`, no pre-takeover frames).
    """

    def __init__(
        self,
        out_dir: str | Path,
        kind: str = "expert",
        shard_frames: int = 512,
        image_format: str = "png",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if image_format not in ("png", "jpeg"):
            raise ValueError(f"image_format must be png or jpeg, got {image_format!r}")
        self.root = Path(out_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.kind = kind
        self.shard_frames = max(1, int(shard_frames))
        self.image_format = image_format
        self._buffer: list[TakeoverSegment] = []
        self._buffered = 0
        self.manifest = self._load_manifest()
        existing = shard_files(self.root)
        for p in existing:
            k, version = shard_meta(p, pq.read_schema(p))
            if k != kind:
                raise DatasetError(f"{self.root} holds {k!r} data; cannot append {kind!r} data")
            if version != SCHEMA_VERSION:
                raise DatasetError(
                    f"{p} has dataset schema version {version}; cannot append version {SCHEMA_VERSION} "
                    f"shards to it (write to a new folder)"
                )
        known = {s["file"] for s in self.manifest["shards"]}
        for p in existing:  # shards whose manifest update was lost (crash between the two renames)
            if p.name not in known:
                self.manifest["shards"].append(_shard_entry(p, pq.read_table(p, columns=_ENTRY_COLUMNS)))
        self._next = int(_SHARD_RE.match(existing[-1].name).group(1)) + 1 if existing else 0
        self.segment_ids: set[str] = {
            sid for s in self.manifest["shards"] for sid in s.get("segment_ids", [])
        }

    def _load_manifest(self) -> dict:
        path = self.root / MANIFEST
        if path.is_file():
            m = json.loads(path.read_text())
            if m.get("schema_version") != SCHEMA_VERSION:
                raise DatasetError(
                    f"{path}: schema version {m.get('schema_version')}, expected {SCHEMA_VERSION}"
                )
            if m.get("kind") != self.kind:
                raise DatasetError(
                    f"{self.root} holds {m.get('kind')!r} data; cannot append {self.kind!r} data"
                )
            return m
        return {"schema_version": SCHEMA_VERSION, "kind": self.kind, "shards": []}

    def add_segment(self, segment: TakeoverSegment) -> None:
        if not segment.frames:
            return
        if segment.segment_id in self.segment_ids or any(
            s.segment_id == segment.segment_id for s in self._buffer
        ):
            raise ValueError(f"segment id {segment.segment_id!r} is already in {self.root}")
        self._buffer.append(segment)
        self._buffered += len(segment.frames)
        if self._buffered >= self.shard_frames:
            self.flush()

    def flush(self) -> Path | None:
        """Write the buffered segments as one shard now; returns its path (None when nothing was buffered)."""
        if not self._buffer:
            return None
        rows = [(seg, i) for seg in self._buffer for i in range(len(seg.frames))]
        table = frames_to_table(rows, self.kind, self.image_format)
        name = f"shard-{self._next:05d}.parquet"
        final = self.root / name
        tmp = self.root / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, final)  # fails instead of overwriting an existing shard
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.root)
        self._next += 1
        self.manifest["shards"].append(_shard_entry(final, table.select(_ENTRY_COLUMNS)))
        _atomic_write_bytes(self.root / MANIFEST, json.dumps(self.manifest, indent=1).encode())
        self.segment_ids.update(seg.segment_id for seg in self._buffer)
        self._buffer, self._buffered = [], 0
        return final

    def close(self) -> None:
        self.flush()
        if not (self.root / MANIFEST).exists():
            _atomic_write_bytes(self.root / MANIFEST, json.dumps(self.manifest, indent=1).encode())

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_ENTRY_COLUMNS = ["segment_id", "trigger", "route_id"]


def _shard_entry(path: Path, table: pa.Table) -> dict:
    sids = list(dict.fromkeys(table.column("segment_id").to_pylist()))
    triggers: dict[str, int] = {}
    seen: set[str] = set()
    for sid, trig in zip(
        table.column("segment_id").to_pylist(), table.column("trigger").to_pylist(), strict=True
    ):
        if sid not in seen:
            seen.add(sid)
            triggers[trig] = triggers.get(trig, 0) + 1
    return {
        "file": path.name,
        "frames": table.num_rows,
        "segments": len(sids),
        "segment_ids": sids,
        "routes": sorted(set(table.column("route_id").to_pylist())),
        "triggers": triggers,
    }


# ------------------------------------------------------------------------------------------ reader
@dataclass
class FrameRecord:
    """One stored frame with its segment fields."""

    segment_id: str
    trigger: str
    trigger_tick: int
    pre_takeover: bool
    frame_index: int
    frame: Frame
    image_bytes: bytes | None = None  # the stored JPEG / PNG when read with decode_images off


class Dataset:
    """A dataset folder opened for reading (`open_dataset`)."""

    def __init__(
        self, root: Path, shards: list[Path], kind: str, schema_version: int = SCHEMA_VERSION
    ) -> None:
        self.root = root
        self.shards = shards
        self.kind = kind
        self.schema_version = schema_version  # of the shards (version 1: no local map columns)
        self._rows_per_shard = [pq.ParquetFile(p).metadata.num_rows for p in shards]

    def __len__(self) -> int:
        return sum(self._rows_per_shard)

    @property
    def num_frames(self) -> int:
        return len(self)

    def read_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        tables = [pq.read_table(p, columns=list(columns) if columns else None) for p in self.shards]
        return (
            pa.concat_tables(tables) if tables else SCHEMA.empty_table().select(list(columns or SCHEMA.names))
        )

    def _shard_rows(self, k: int, stride: int = 1, decode_images: bool = True) -> list[dict]:
        table = pq.read_table(self.shards[k])
        if stride > 1:
            keep = np.asarray(table.column("frame_index").to_numpy()) % stride == 0
            table = table.filter(pa.array(keep))
        return table_to_rows(table, decode_images)

    def frame_interval(self) -> int:
        """Ticks between consecutive recorded frames (the median over the first shard's segments; 4 for
        expert data at 5 Hz, 1 for takeover data recorded every 20 Hz tick); 1 when no segment has two."""
        for path in self.shards:
            t = pq.read_table(path, columns=["segment_id", "tick"])
            seg = np.asarray(t.column("segment_id").to_pylist(), dtype=object)
            ticks = t.column("tick").to_numpy()
            same = seg[1:] == seg[:-1]
            if same.any():
                return max(int(np.median(np.diff(ticks)[same])), 1)
        return 1

    def count(self, stride: int = 1) -> int:
        """Frames that `iter_records(stride)` yields (reads only the frame_index column)."""
        if stride <= 1:
            return len(self)
        return sum(
            int((pq.read_table(p, columns=["frame_index"]).column(0).to_numpy() % stride == 0).sum())
            for p in self.shards
        )

    def iter_records(self, stride: int = 1, decode_images: bool = True) -> Iterator[FrameRecord]:
        """Every stored frame, or with `stride` k every k-th frame of each segment (frame_index % k == 0:
        consecutive frames at 5 Hz or more are nearly alike, and a bank of every second one fits twice
        the routes in memory). With `decode_images` off the records keep the stored image bytes
        (`FrameRecord.image_bytes`) and their frames no pixels."""
        if stride < 1:
            raise DatasetError(f"stride must be a positive integer, got {stride}")
        for k in range(len(self.shards)):
            for r in self._shard_rows(k, stride, decode_images):
                yield FrameRecord(
                    r["segment_id"],
                    r["trigger"],
                    r["trigger_tick"],
                    r["pre_takeover"],
                    r["frame_index"],
                    r["frame"],
                    r["image_bytes"],
                )

    def iter_frames(self) -> Iterator[Frame]:
        for rec in self.iter_records():
            yield rec.frame

    def iter_segments(self) -> Iterator[TakeoverSegment]:
        for k in range(len(self.shards)):
            groups: dict[str, list[dict]] = {}
            for r in self._shard_rows(k):
                groups.setdefault(r["segment_id"], []).append(r)
            for sid, rows in groups.items():
                rows.sort(key=lambda r: r["frame_index"])
                if len(rows) != rows[0]["num_frames"]:
                    raise DatasetError(
                        f"{self.shards[k]}: segment {sid} has {len(rows)} of {rows[0]['num_frames']} frames"
                    )
                r0 = rows[0]
                yield TakeoverSegment(
                    segment_id=sid,
                    trigger=r0["trigger"],
                    trigger_tick=r0["trigger_tick"],
                    route_id=r0["frame"].route_id,
                    town=r0["frame"].town,
                    frames=[r["frame"] for r in rows],
                    pre_takeover=np.array([r["pre_takeover"] for r in rows], bool),
                    info=json.loads(r0["segment_info"]),
                )

    def segments(self) -> list[TakeoverSegment]:
        return list(self.iter_segments())

    def frames(self) -> list[Frame]:
        return list(self.iter_frames())

    def locate(self, index: int) -> tuple[int, int]:
        """Global frame index -> (shard number, row in shard)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range ({len(self)} frames)")
        for k, n in enumerate(self._rows_per_shard):
            if index < n:
                return k, index
            index -= n
        raise IndexError(index)  # pragma: no cover

    def torch_dataset(self, with_images: bool = True) -> FrameTorchDataset:
        return FrameTorchDataset(self, with_images=with_images)


def open_dataset(root: str | Path) -> Dataset:
    """Open a dataset folder; DatasetError when it is missing, empty of shards, of an unknown version, or
    mixes schema versions."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    shards = shard_files(root)
    kind = ""
    version = SCHEMA_VERSION
    manifest = root / MANIFEST
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        if m.get("schema_version") not in READABLE_VERSIONS:
            raise DatasetError(
                f"{manifest}: dataset schema version {m.get('schema_version')}; this version of takeover "
                f"reads versions {_versions_text()} only"
            )
        kind = m.get("kind", "")
        version = int(m["schema_version"])
    if not shards and not manifest.is_file():
        raise DatasetError(f"{root} holds no dataset shards (shard-*.parquet) and no {MANIFEST}")
    versions = set()
    for p in shards:
        k, v = shard_meta(p, pq.read_schema(p))
        kind = k or kind
        versions.add(v)
    if len(versions) > 1:
        raise DatasetError(f"{root} mixes dataset schema versions {sorted(versions)}")
    if versions:
        version = versions.pop()
    return Dataset(root, shards, kind, version)


# ----------------------------------------------------------------------------------- torch view
class FrameTorchDataset(TorchDataset):
    """A map-style `torch.utils.data.Dataset` over the frames of a dataset (plain PyTorch).

    Item: a dict of tensors (`image` uint8 (3, H, W) when stored and `with_images`, `speed`,
    `target_points` (2, 2), `command`, `path` (20, 2), `speed_waypoints` (10, 2), `target_speed`,
    `control` (3,), `ego` (4,), `ego_extent` (2,), `pre_takeover`, and `has_path` / `has_speed_waypoints`
    masks; missing labels are zeros with the mask False), `buckets` (bool, multi-hot over
    `envs.buckets.BUCKETS`) and strings (`language`, `segment_id`, `trigger`). The default collate
    function batches it. One decoded shard is cached per worker, so sequential access (or shuffling within
    shards) is cheap. The route and lane points (variable length) are not in the items.
    """

    def __init__(self, dataset: Dataset, with_images: bool = True) -> None:
        self.dataset = dataset
        self.with_images = with_images
        self._cache: tuple[int, list[dict]] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def _row(self, index: int) -> dict:
        k, i = self.dataset.locate(index)
        if self._cache is None or self._cache[0] != k:
            self._cache = (k, self.dataset._shard_rows(k))
        return self._cache[1][i]

    def __getitem__(self, index: int) -> dict:
        import torch

        r = self._row(int(index))
        f: Frame = r["frame"]
        item: dict = {
            "speed": torch.tensor(f.speed, dtype=torch.float32),
            "target_points": torch.from_numpy(np.asarray(f.target_points, np.float32)),
            "command": torch.tensor(f.command, dtype=torch.int64),
            "target_speed": torch.tensor(f.target_speed, dtype=torch.float32),
            "control": torch.from_numpy(np.asarray(f.control, np.float32)),
            "ego": torch.from_numpy(np.asarray(f.ego, np.float32)),
            "ego_extent": torch.from_numpy(np.asarray(f.ego_extent, np.float32)),
            "pre_takeover": torch.tensor(bool(r["pre_takeover"])),
            "language": f.language,
            "segment_id": r["segment_id"],
            "trigger": r["trigger"],
            "buckets": torch.tensor([b in f.buckets for b in BUCKETS], dtype=torch.bool),
        }
        for name, shape in (("path", (20, 2)), ("speed_waypoints", (10, 2))):
            v = getattr(f, name)
            item[f"has_{name}"] = torch.tensor(v is not None)
            item[name] = torch.from_numpy(
                np.zeros(shape, np.float32) if v is None else np.asarray(v, np.float32)
            )
        if self.with_images and f.image is not None:
            img = f.image if f.image.ndim == 3 else f.image[..., None]
            item["image"] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return item
