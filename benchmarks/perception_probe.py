"""Does a checkpoint's vision encoder see what its policy fails to react to? Prints JSON.

    python benchmarks/perception_probe.py --checkpoint RUN --train DATASET [--train DATASET ...] \
        --test DATASET [--steps 1500]

Two numbers per object class (vehicles, cyclists, pedestrians) and distance band ahead (3-12, 12-22,
22-35 m, centres within 3.5 m of the ego's axis), on the `--test` dataset's frames:

- `probe_auc`: a small MLP trained on the encoder's image tokens (frozen, as the policy computes them)
  to tell whether such an object is there: the ROC AUC of its scores. Near 1: the tokens hold the object.
- `commentary`: on frames with such an object in the band while the ego moves (> 3 m/s), the share of
  the policy's own greedy commentaries that name the object's class and that ask to slow down or stop,
  next to the same shares of the expert's labels.

A high AUC with commentary that neither names the object nor slows down says the failure lies after the
encoder (the LLM and the heads do not use what the image tokens hold), not in what the camera shows.
The probe's training frames are every `--train-stride`-th frame of `--train`, with the frames holding a
cyclist or pedestrian in a band oversampled tenfold (they are a few per cent of the frames).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import nn

from envs.dataset import DatasetError
from envs.geometry import to_ego_frame
from envs.scene import AgentKind
from learner.data import DataError, FrameBank
from policies.checkpoint import CheckpointError, load_for_inference, resolve_checkpoint

CLASSES = {
    "vehicle": (AgentKind.VEHICLE, AgentKind.EMERGENCY, AgentKind.PARKED_VEHICLE),
    "cyclist": (AgentKind.BICYCLE,),
    "pedestrian": (AgentKind.PEDESTRIAN,),
}
BANDS = ((3.0, 12.0), (12.0, 22.0), (22.0, 35.0))  # m ahead of the ego centre
HALF_WIDTH = 3.5  # m either side of the ego's axis
NAMES = {"vehicle": ("vehicle", "car"), "cyclist": ("cyclist", "bicycle"), "pedestrian": ("pedestrian",)}
SLOW_WORDS = ("decelerate", "slow down", "reduce speed", "reduced speed", "stop", "brake", "standstill")
MIN_SPEED = 3.0  # m/s: commentary is checked on frames where the ego moves


def band_labels(bank: FrameBank) -> np.ndarray:
    """(N, classes x bands) 1.0 where an object of that class has its centre in that band ahead."""
    y = np.zeros((len(bank), len(CLASSES) * len(BANDS)), np.float32)
    for i, f in enumerate(bank.frames):
        if not len(f.agent_box):
            continue
        ax, ay = to_ego_frame(f.agent_box[:, :2], f.ego[0], f.ego[1], f.ego[2]).T
        for c, kinds in enumerate(CLASSES.values()):
            near = np.isin(f.agent_kind, [int(k) for k in kinds]) & (np.abs(ay) < HALF_WIDTH)
            for b, (lo, hi) in enumerate(BANDS):
                y[i, c * len(BANDS) + b] = float((near & (ax >= lo) & (ax < hi)).any())
    return y


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC by ranks (Mann-Whitney U); None without both classes."""
    pos = labels > 0.5
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if not n1 or not n0:
        return None
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@torch.inference_mode()
def image_tokens(encoder: nn.Module, bank: FrameBank, idx: np.ndarray, batch: int = 64) -> torch.Tensor:
    out = [encoder(torch.from_numpy(np.asarray(bank.images[idx[k : k + batch]]))).flatten(1)
           for k in range(0, len(idx), batch)]  # fmt: skip
    return torch.cat(out).float()


def train_probe(x: torch.Tensor, y: np.ndarray, weights: np.ndarray, steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean, std = x.mean(0), x.std(0) + 1e-5
    head = nn.Sequential(nn.Linear(x.shape[1], 256), nn.GELU(), nn.Linear(256, y.shape[1]))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    target = torch.from_numpy(y)
    p = weights / weights.sum()
    for step in range(steps):
        for g in opt.param_groups:  # cosine
            g["lr"] = 1e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
        idx = torch.from_numpy(rng.choice(len(x), 64, p=p))
        loss = F.binary_cross_entropy_with_logits(head((x[idx] - mean) / std), target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return nn.Sequential(_Standardise(mean, std), head).eval()


class _Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _says(text: str, words: tuple[str, ...]) -> bool:
    t = text.lower().replace("stop sign", "")  # a cause, not the "stop" speed action
    return any(w in t for w in words)


@torch.inference_mode()
def commentary_shares(policy: nn.Module, bank: FrameBank, y: np.ndarray, per_band: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    moving = np.array([f.speed > MIN_SPEED for f in bank.frames])
    out: dict = {}
    for c, name in enumerate(CLASSES):
        out[name] = {}
        for b, (lo, hi) in enumerate(BANDS):
            idx = np.flatnonzero((y[:, c * len(BANDS) + b] > 0) & moving)
            idx = rng.choice(idx, min(per_band, len(idx)), replace=False) if len(idx) else idx
            texts = []
            for i in idx:
                texts.append((policy.predict(bank.observation(i))["language"][0], bank.frames[i].language))
            shares: dict[str, float | int | None] = {"frames": len(texts)}
            for who, k in (("policy", 0), ("expert", 1)):
                said = [t[k] for t in texts]
                shares[f"{who}_names_it"] = _share(said, NAMES[name])
                shares[f"{who}_slows"] = _share(said, SLOW_WORDS)
            out[name][_band_name(lo, hi)] = shares
    return out


def _share(texts: list[str], words: tuple[str, ...]) -> float | None:
    return round(sum(_says(t, words) for t in texts) / len(texts), 3) if texts else None


def _band_name(lo: float, hi: float) -> str:
    return f"{lo:.0f}-{hi:.0f}m"


def _per_band(values: np.ndarray | list) -> dict:
    """classes x bands values (flat, class-major) -> {class: {band: value}}."""
    return {name: {_band_name(*band): values[c * len(BANDS) + b] for b, band in enumerate(BANDS)}
            for c, name in enumerate(CLASSES)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a VLA checkpoint folder or training run")
    ap.add_argument("--train", action="append", required=True, help="dataset(s) the probe is fitted on")
    ap.add_argument("--test", required=True, help="dataset the probe and the commentary are scored on")
    ap.add_argument("--train-stride", type=int, default=4)
    ap.add_argument("--test-stride", type=int, default=10)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--commentary-frames", type=int, default=150, help="frames per class and band")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    path = resolve_checkpoint(args.checkpoint)
    policy = load_for_inference(path, expect="vla")
    train = FrameBank.load(args.train, progress=False, stride=args.train_stride)
    test = FrameBank.load([args.test], progress=False, stride=args.test_stride)
    y_train, y_test = band_labels(train), band_labels(test)
    x_train = image_tokens(policy.vision, train, np.arange(len(train)))
    x_test = image_tokens(policy.vision, test, np.arange(len(test)))
    weights = 1.0 + 9.0 * y_train[:, len(BANDS) :].max(1)  # frames with a cyclist or pedestrian x10
    with torch.enable_grad():
        probe = train_probe(x_train, y_train, weights, args.steps, args.seed)
    with torch.inference_mode():
        scores = torch.sigmoid(probe(x_test)).numpy()
    result = {
        "checkpoint": str(path),
        "train_frames": len(train),
        "test_frames": len(test),
        "probe_auc": _per_band([auc(y_test[:, j], scores[:, j]) for j in range(y_test.shape[1])]),
        "positives_in_test": _per_band([int(v) for v in y_test.sum(0)]),
        "commentary": commentary_shares(policy, test, y_test, args.commentary_frames, args.seed),
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, DatasetError, DataError) as exc:  # a missing or damaged input: one line
        raise SystemExit(f"perception_probe: {exc}") from None
