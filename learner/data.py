"""Training samples for imitation pre-training and SFT: frames in memory, bucket-weighted sampling,
Action Dreaming samples mixed in, batches in the policies' format.

`FrameBank.load(dirs)` reads datasets (expert and takeover data alike) into memory once: the images as
their stored JPEG / PNG bytes, decoded per batch (`EncodedImages`; or decoded once, `decode_images`), and
the frames' labels and scene snapshots. `bucket_weights` gives each SimLingo bucket
(`envs.buckets.BUCKETS`, plus the derived "moving_off" and "none" for untagged frames) the same
share of the samples unless told otherwise, spread evenly over its frames. `BatchBuilder` turns frame
indices into a batch dict:

    image (B, 3, H, W) uint8, speed (B,), target_points (B, 2, 2), command (B,), path (B, 20, 2),
    speed_waypoints (B, 10, 2), has_path / has_speed_waypoints (B,) bool, action_weight (B,) float
    (1 - m: 0 on pre-takeover frames, which supervise language only), language_weight (B,) float (0 on
    commentary dreams, below), language / instruction / mode (lists of str), dreamed (B,) bool, with
    `bev` on: bev (B, C, rows, cols) occupancy ahead (`policies.bev`), and with `history_ticks`:
    previous_image (B, 3, H, W) uint8, the same drive's image that much earlier
    (`FrameBank.previous_indices`)

With probability `dream_share` a sample is replaced by an Action Dreaming one (SimLingo): an alternative
future of the frame (`envs.action_dreaming`) with an instruction in the prompt; in "instruction_following"
mode the answer accepts and the target is the dreamed future, in "safety" mode an unsafe or not allowed
instruction is refused (naming why) and the target stays the expert's. With probability
`commentary_dream_share` a sample is instead a commentary dream: a dreamed future of a speed kind (faster,
slower, stop, keep) or a lane change, spoken in the commentary (the lane change and the speed action),
given and not learnt (`language_weight` 0), and the dreamed future as the target.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from envs.buckets import BUCKETS, TICK_DT
from envs.dataset import Dataset, decode_image, open_dataset
from envs.segments import Frame
from policies.bev import bev_occupancy
from policies.language import ROUTE_PHRASES, SPEED_PHRASES, RouteAction, speed_action, spoken_speed_action
from policies.prompts import FOLLOW_ANSWER, INSTRUCTIONS, REFUSE_ANSWER, REFUSE_REASONS

NO_BUCKET = "none"
# Frames where the ego stands or rolls slowly and the expert speeds it up (a green light, a cleared road,
# pulling away): about 6 % of expert frames at 5 Hz, against a third standing still, and the cure for
# the "inertia" failure of imitation policies, which learn to hold whatever low speed they have (at
# 0 m/s, or creeping at 0.7 m/s because the near waypoints copy the current speed). A derived bucket,
# so its share can be raised without re-tagging datasets.
MOVING_OFF = "moving_off"
MOVING_OFF_MAX_SPEED = 3.0  # m/s
MOVING_OFF_MARGIN = 0.5  # m/s: the label's desired speed above the current one
DERIVED_BUCKETS = (MOVING_OFF, NO_BUCKET)


def derived_tags(frame: Frame) -> list[str]:
    from envs.buckets import STOP_SPEED
    from policies.controller import desired_speed_from_waypoints
    from policies.language import STOP_TARGET_SPEED

    if frame.path is None or frame.speed_waypoints is None or frame.speed >= MOVING_OFF_MAX_SPEED:
        return []
    wants_to_go = frame.speed < STOP_SPEED and frame.target_speed >= STOP_TARGET_SPEED
    speeds_up = desired_speed_from_waypoints(frame.speed_waypoints) > frame.speed + MOVING_OFF_MARGIN
    return [MOVING_OFF] if wants_to_go or speeds_up else []


# the lane-change dreams a commentary dream speaks of, with their route actions (BatchBuilder)
_SPOKEN_ROUTES = {
    "lane_change_left": RouteAction.CHANGE_LANE_LEFT,
    "lane_change_right": RouteAction.CHANGE_LANE_RIGHT,
}
_OBJECT_WORD = {
    "vehicle": "vehicle", "pedestrian": "pedestrian", "bicycle": "bicycle", "static": "obstacle",
    "emergency": "emergency vehicle", "parked_vehicle": "parked vehicle", "cone": "cone",
}  # fmt: skip


class DataError(ValueError):
    pass


def _release_freed_memory() -> None:
    """Hand the heap memory freed while decoding shards back to the OS (glibc keeps it otherwise:
    about 40 % on top of the bank's own size)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class EncodedImages:
    """Camera images kept as their stored JPEG / PNG bytes and decoded when a batch asks for them: a
    256 x 128 JPEG frame holds about 6 KB instead of 98 KB of pixels, for about 0.4 ms of decoding per
    image (a few per cent of a training step). Indexed like the (N, 3, H, W) uint8 array it stands for."""

    def __init__(self, blobs: list[bytes], image_shape: tuple[int, int, int]) -> None:
        self.blobs = blobs
        self.image_shape = image_shape  # (3, H, W)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.blobs), *self.image_shape)

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, idx: int | np.ndarray) -> np.ndarray:
        if np.ndim(idx) == 0:
            return self[np.array([idx])][0]
        idx = np.asarray(idx).reshape(-1)
        out = np.empty((len(idx), *self.image_shape), np.uint8)
        for j, i in enumerate(idx):
            try:
                out[j] = decode_image(self.blobs[i]).transpose(2, 0, 1)
            except (OSError, ValueError) as e:  # a truncated or damaged file in the shard
                raise DataError(f"the stored image of bank frame {int(i)} cannot be decoded: {e}") from e
        return out


def _stored_image_shape(data: bytes, where: str) -> tuple[int, int, int]:
    """(3, H, W) of a stored image from its header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return (3, im.height, im.width)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{where}: the stored image is not a readable JPEG / PNG ({e})") from e


@dataclass
class FrameBank:
    """Frames of one or more datasets, in memory."""

    frames: list[Frame]
    pre_takeover: np.ndarray  # (N,) bool
    images: np.ndarray | EncodedImages  # (N, 3, H, W) uint8, or the stored bytes decoded per batch
    sources: list[str] = field(default_factory=list)
    from_takeover: np.ndarray | None = None  # (N,) bool: the frame comes from a takeover dataset
    segment: np.ndarray | None = None  # (N,) int: which recorded drive or takeover segment (None: one each)

    def __len__(self) -> int:
        return len(self.frames)

    def observation(self, i: int) -> dict:
        """Frame i as a policy's observation batch of one (image, speed, target points, command)."""
        f = self.frames[i]
        return {
            "image": torch.from_numpy(np.asarray(self.images[np.array([i])])),
            "speed": torch.tensor([float(f.speed)], dtype=torch.float32),
            "target_points": torch.from_numpy(np.asarray(f.target_points, np.float32))[None],
            "command": torch.tensor([int(f.command)]),
        }

    def previous_indices(self, history_ticks: int) -> np.ndarray:
        """(N,) for each frame the bank index of the frame of the same drive or segment that is nearest
        to `history_ticks` earlier (a VLA with `vision.history_s` sees its image too), among the frames
        before it; the frame itself when none is (the first of a segment, as at the start of a drive
        where the agent has no older image either). Exact when the history is a multiple of the bank's
        frame spacing (0.4 s for expert data at 5 Hz with every second frame kept)."""
        n = len(self.frames)
        out = np.arange(n)
        if history_ticks <= 0:
            return out
        segment = self.segment if self.segment is not None else np.arange(n)
        ticks = np.array([f.tick for f in self.frames], np.int64)
        order = np.lexsort((ticks, segment))
        starts = np.flatnonzero(np.r_[True, segment[order][1:] != segment[order][:-1]])
        for lo, hi in zip(starts, [*starts[1:], n], strict=True):
            idx = order[lo:hi]
            t = ticks[idx]
            want = t - history_ticks
            r = np.searchsorted(t, want)  # t[r - 1] < want <= t[r]; r <= own position
            before = np.maximum(r - 1, 0)
            after = np.minimum(r, np.maximum(np.arange(len(t)) - 1, 0))  # never the frame itself or later
            pick = np.where(np.abs(t[before] - want) <= np.abs(t[after] - want), before, after)
            out[idx] = idx[pick]
        return out

    @staticmethod
    def load(
        dirs: Sequence[str | Path],
        progress: bool = True,
        stride: int = 1,
        hz: float = 0.0,
        takeover_hz: float = 0.0,
        decode_images: bool = False,
    ) -> FrameBank:
        """Read the datasets; with `stride` k only every k-th frame of each segment. With `hz` > 0 each
        dataset gets its own stride instead, the one that brings its recording rate nearest to `hz`
        (expert data at 5 Hz and takeover data at 20 Hz mixed at one rate). `takeover_hz` > 0 sets the
        rate of takeover datasets alone: their segments are short (a few seconds each), so they can keep
        more of their frames than long expert drives in the same memory. Images stay encoded
        (`EncodedImages`) unless `decode_images`, which holds their pixels instead (16x the memory for
        JPEG frames, no decoding per batch)."""
        frames: list[Frame] = []
        pre: list[bool] = []
        takeover: list[bool] = []
        segment: list[int] = []
        segment_ids: dict[tuple[int, str], int] = {}
        datasets = [open_dataset(d) for d in dirs]
        strides = [_dataset_stride(ds, stride, hz, takeover_hz) for ds in datasets]
        counts = [ds.count(k) for ds, k in zip(datasets, strides, strict=True)]
        total = sum(counts)
        images: np.ndarray | None = None  # decoded: filled in place, one copy of the pixels, not two
        blobs: list[bytes] = []
        image_shape: tuple[int, ...] | None = None
        for j, (d, ds, n, k) in enumerate(zip(dirs, datasets, counts, strides, strict=True)):
            bar = tqdm(total=n, desc=f"loading {Path(d).name}", unit="frame", disable=not progress)
            for rec in ds.iter_records(k, decode_images=decode_images):
                f = rec.frame
                if f.image is None and rec.image_bytes is None:
                    raise DataError(f"{d}: frame {f.tick} of route {f.route_id} has no image")
                if decode_images:
                    shape = f.image.transpose(2, 0, 1).shape
                else:
                    shape = _stored_image_shape(rec.image_bytes, f"{d}: frame {f.tick} of route {f.route_id}")
                if image_shape is None:
                    image_shape = shape
                    if decode_images:
                        images = np.empty((total, *shape), np.uint8)
                if shape != image_shape:
                    raise DataError(
                        f"{d}: image size {shape[1:]} differs from {image_shape[1:]} (height, width); "
                        "collect the datasets with one camera"
                    )
                if decode_images:
                    images[len(frames)] = f.image.transpose(2, 0, 1)
                    f.image = None  # the bank keeps the one copy
                else:
                    blobs.append(rec.image_bytes)
                frames.append(f)
                pre.append(bool(rec.pre_takeover))
                takeover.append(ds.kind == "takeover")
                segment.append(segment_ids.setdefault((j, rec.segment_id), len(segment_ids)))
                bar.update(1)
                if len(frames) % 4096 == 0:
                    _release_freed_memory()
            bar.close()
        _release_freed_memory()
        if image_shape is None or not frames:
            raise DataError(f"no frames in {', '.join(map(str, dirs))}")
        store = images[: len(frames)] if images is not None else EncodedImages(blobs, image_shape)
        sources = [str(d) for d in dirs]
        return FrameBank(
            frames, np.asarray(pre, bool), store, sources, np.asarray(takeover, bool), np.asarray(segment)
        )

    def languages(self) -> list[str]:
        return [f.language for f in self.frames if f.language]

    def canonicalise_language(self) -> None:
        """Rewrite each frame's commentary in its templates' canonical phrasing (`train.canonical_language`;
        `policies.language.canonical_commentary` says why)."""
        from policies.language import canonical_commentary

        for f in self.frames:
            f.language = canonical_commentary(f.language)

    def trajectories(self) -> np.ndarray:
        """(M, 60) expert path + speed waypoints of the frames that have both (planner anchors)."""
        rows = [
            np.concatenate([f.path.reshape(-1), f.speed_waypoints.reshape(-1)])
            for f in self.frames
            if f.path is not None and f.speed_waypoints is not None
        ]
        return np.asarray(rows, np.float32).reshape(-1, 60)


def _dataset_stride(ds: Dataset, stride: int, hz: float, takeover_hz: float) -> int:
    if takeover_hz > 0 and ds.kind == "takeover":
        return rate_stride(ds.frame_interval(), takeover_hz)
    return rate_stride(ds.frame_interval(), hz) if hz > 0 else stride


def rate_stride(interval_ticks: int, hz: float) -> int:
    """The stride that takes frames recorded every `interval_ticks` ticks nearest to `hz`."""
    if hz <= 0:
        raise DataError(f"frame rate must be positive, got {hz}")
    recorded_hz = 1.0 / (interval_ticks * TICK_DT)
    return max(round(recorded_hz / hz), 1)


def bucket_weights(frames: Sequence[Frame], weights: dict[str, float] | None = None) -> np.ndarray:
    """Per-frame sampling probabilities: each bucket's share (default equal) spread evenly over its
    frames; a frame in several buckets collects from each. Buckets without frames give their share to
    the others."""
    weights = dict(weights or {})
    names = [*BUCKETS, *DERIVED_BUCKETS]
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise DataError(f"unknown buckets in bucket_weights: {', '.join(unknown)}; known: {', '.join(names)}")
    member = np.zeros((len(frames), len(names)), bool)
    for i, f in enumerate(frames):
        tags = [b for b in f.buckets if b in BUCKETS] + derived_tags(f)
        for b in tags:
            member[i, names.index(b)] = True
        if not tags:
            member[i, -1] = True
    counts = member.sum(0)
    share = np.array([float(weights.get(b, 1.0)) for b in names]) * (counts > 0)
    if share.sum() <= 0:
        raise DataError("bucket weights leave no frame with a positive probability")
    per_frame = (member * (share / np.maximum(counts, 1))).sum(1)
    return per_frame / per_frame.sum()


def with_takeover_share(probs: np.ndarray, from_takeover: np.ndarray, share: float) -> np.ndarray:
    """Sampling probabilities rescaled so that takeover frames get `share` of the draws (the rest go to
    expert frames), each side keeping its bucket weighting: a few thousand takeover frames next to a
    hundred thousand expert frames would otherwise hardly be drawn."""
    if not 0.0 <= share <= 1.0:
        raise DataError(f"takeover_share must be in [0, 1], got {share}")
    sides = (from_takeover, ~from_takeover)
    if share > 0 and not from_takeover.any():
        raise DataError("takeover_share is set but no --data folder holds takeover data")
    if share < 1 and from_takeover.all():
        raise DataError("takeover_share < 1 needs expert data, but every --data folder holds takeover data")
    out = np.zeros_like(probs)
    for side, part in zip(sides, (share, 1.0 - share), strict=True):
        mass = probs[side].sum()
        if part > 0 and mass > 0:
            out[side] = probs[side] * (part / mass)
    return out / out.sum()


class BatchBuilder:
    """Frame indices -> a batch dict (see the module docstring); Action Dreaming samples mixed in."""

    def __init__(self, bank: FrameBank, dream_share: float = 0.0, seed: int = 0, bev: bool = False,
                 history_ticks: int = 0, history_dropout: float = 0.0,
                 commentary_dropout: float = 0.0, commentary_dream_share: float = 0.0) -> None:  # fmt: skip
        for name, share in (("dream_share", dream_share), ("history_dropout", history_dropout),
                            ("commentary_dropout", commentary_dropout),
                            ("commentary_dream_share", commentary_dream_share)):  # fmt: skip
            if not 0.0 <= share <= 1.0:
                raise DataError(f"{name} must be in [0, 1], got {share}")
        if dream_share + commentary_dream_share > 1.0:
            raise DataError(
                f"dream_share + commentary_dream_share must be at most 1, got "
                f"{dream_share} + {commentary_dream_share}"
            )
        self.bank = bank
        # A VLA with camera history (`vision.history_s`) also gets the image `history_ticks` earlier. With
        # `history_dropout` that share of the samples gets the current image again, as at a standstill:
        # otherwise the pair tells "has stood for a while" from "has just moved off" and the policy copies
        # its own past (the copycat problem): trained without dropout, it stood at the start of 7 of the
        # first 12 evaluation routes, saying "Pull away" with its speed waypoints at 0.2 m/s.
        self.previous = bank.previous_indices(history_ticks) if history_ticks > 0 else None
        self.history_dropout = history_dropout
        self.bev = bev  # add the BEV occupancy targets (for a VLA with `bev_head`)
        # `commentary_dropout`: that share of the recorded frames comes without its commentary (an empty
        # answer: no language loss, the waypoint queries follow the prompt), so that the policy can also
        # drive without commentary (one forward a decision). Tried as a way to make the waypoints read the
        # image rather than the commentary; benchmarks/language_grounding.py since showed that without it
        # they hardly read the commentary anyway.
        self.commentary_dropout = commentary_dropout
        # `commentary_dream_share`: samples whose commentary speaks a dreamed future (its lane change and
        # speed action) and whose target is that future (the image is the recorded one). Trained on the
        # expert's labels alone, the waypoints hardly follow the commentary (what it says, the image shows
        # too); these samples differ only in what the commentary says, so the waypoints must read it. That
        # is what GRPO over sampled commentaries needs (different commentaries, different waypoints) and
        # what lets "Decelerate" brake and "Change lane to the left" steer. No language loss on them: the
        # dreamed action may be unsafe or not allowed.
        self.commentary_dream_share = commentary_dream_share
        self.dream_share = dream_share
        self.rng = np.random.default_rng(seed)
        self._dreams: dict[int, list] = {}

    def _dream_options(self, i: int) -> list:
        """The frame's dreamed futures (computed once per frame; none without the expert's action labels)."""
        from envs.action_dreaming import dream_actions

        f = self.bank.frames[i]
        if f.path is None or f.speed_waypoints is None:
            return []
        if i not in self._dreams:
            self._dreams[i] = dream_actions(f, np.random.default_rng(i))
        return self._dreams[i]

    def _commentary_dream(self, i: int) -> dict | None:
        """A dreamed future of a speed kind or a lane change, spoken as the commentary: the frame's route
        sentence (a lane change's own for those) and the dream's speed action (None: the frame's
        commentary has no speed sentence, or there is no such dream)."""
        from envs.action_dreaming import SPEED_KINDS

        f = self.bank.frames[i]
        if spoken_speed_action(f.language) is None:
            return None
        options = [d for d in self._dream_options(i) if d.kind in _SPOKEN_ROUTES or d.kind in SPEED_KINDS]
        if not options:
            return None
        d = options[int(self.rng.integers(len(options)))]
        route = f.language.partition(". ")[0]
        if d.kind in _SPOKEN_ROUTES:
            route = self._pick(ROUTE_PHRASES[_SPOKEN_ROUTES[d.kind]])
        speed = self._pick(SPEED_PHRASES[speed_action(d.final_speed, f.speed)])
        return {"instruction": "", "mode": "", "language": f"{route}. {speed}.", "language_weight": 0.0,
                "path": d.path, "speed_waypoints": d.speed_waypoints}  # fmt: skip

    def _pick(self, phrasings: Sequence[str]) -> str:
        return phrasings[int(self.rng.integers(len(phrasings)))]

    def _dream(self, i: int) -> dict | None:
        f = self.bank.frames[i]
        options = self._dream_options(i)
        if not options:
            return None
        d = options[int(self.rng.integers(len(options)))]
        obj = _OBJECT_WORD.get(d.collision_kind or "vehicle", "vehicle")
        instruction = INSTRUCTIONS[d.kind].format(obj=obj)
        mode = "safety" if self.rng.random() < 0.5 else "instruction_following"
        if mode == "safety" and not (d.allowed and d.safe):
            reason = d.reason or ("collision" if not d.safe else "not_allowed")
            why = REFUSE_REASONS.get(reason, REFUSE_REASONS["not_allowed"]).format(obj=obj)
            return {"instruction": instruction, "mode": mode, "language": REFUSE_ANSWER.format(why=why),
                    "path": f.path, "speed_waypoints": f.speed_waypoints}  # fmt: skip
        return {"instruction": instruction, "mode": mode, "language": FOLLOW_ANSWER,
                "path": d.path, "speed_waypoints": d.speed_waypoints}  # fmt: skip

    def build(self, indices: Sequence[int]) -> dict:
        idx = np.asarray(indices, int)
        frames = [self.bank.frames[i] for i in idx]
        n = len(frames)
        path = np.zeros((n, 20, 2), np.float32)
        speed_wps = np.zeros((n, 10, 2), np.float32)
        has_path = np.zeros(n, bool)
        has_speed = np.zeros(n, bool)
        language, instruction, mode = [], [], []
        dreamed = np.zeros(n, bool)
        language_weight = np.ones(n, np.float32)
        for k, (i, f) in enumerate(zip(idx, frames, strict=True)):
            u = self.rng.random() if self.dream_share or self.commentary_dream_share else 1.0
            d = self._dream(int(i)) if u < self.dream_share else None
            if 0.0 <= u - self.dream_share < self.commentary_dream_share:
                d = self._commentary_dream(int(i))
            if d is not None:
                dreamed[k] = True
                f_path, f_speed = d["path"], d["speed_waypoints"]
                language.append(d["language"])
                instruction.append(d["instruction"])
                mode.append(d["mode"])
                language_weight[k] = d.get("language_weight", 1.0)
            else:
                f_path, f_speed = f.path, f.speed_waypoints
                dropped = self.commentary_dropout and self.rng.random() < self.commentary_dropout
                language.append("" if dropped else f.language)
                instruction.append("")
                mode.append("")
            if f_path is not None:
                path[k], has_path[k] = f_path, True
            if f_speed is not None:
                speed_wps[k], has_speed[k] = f_speed, True
        pre = self.bank.pre_takeover[idx]
        batch = {
            "image": torch.from_numpy(self.bank.images[idx]),
            "speed": torch.tensor([f.speed for f in frames], dtype=torch.float32),
            "target_points": torch.from_numpy(
                np.stack([np.asarray(f.target_points, np.float32) for f in frames])
            ),
            "command": torch.tensor([f.command for f in frames], dtype=torch.long),
            "path": torch.from_numpy(path),
            "speed_waypoints": torch.from_numpy(speed_wps),
            "has_path": torch.from_numpy(has_path),
            "has_speed_waypoints": torch.from_numpy(has_speed),
            "action_weight": torch.from_numpy((~pre | dreamed).astype(np.float32)),
            "language": language,
            "instruction": instruction,
            "mode": mode,
            "dreamed": torch.from_numpy(dreamed),
            "language_weight": torch.from_numpy(language_weight),
        }
        if self.previous is not None:
            keep = self.rng.random(n) >= self.history_dropout
            earlier = np.where(keep, self.previous[idx], idx)
            batch["previous_image"] = torch.from_numpy(self.bank.images[earlier])
        if self.bev:
            bev = [bev_occupancy(f.ego, f.agent_kind, f.agent_box) for f in frames]
            batch["bev"] = torch.from_numpy(np.stack(bev))
        return batch
