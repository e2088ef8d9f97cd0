"""The compact planner of the TakeAD variant: camera image -> trajectory, no language.

A small CNN encodes the image; an MLP encodes speed and target points, an embedding the navigation
command. The trajectory head is a mixture over K anchor trajectories (a fixed vocabulary, k-means over
training trajectories): per mode a logit and an offset, mode k's trajectory = anchor_k + offset_k. Every
mode is an isotropic Gaussian with a fixed std `sigma` (metres), so the policy has an exact likelihood
for any trajectory (`log_prob`), which is what DPO and GRPO need, and sampling a mode is sampling an
action (`sample`).

A trajectory is the 20-point path (1 m apart) and the 10 speed waypoints (0.25 s apart), both (x, y) in
the ego frame (x forward, y left), flattened and concatenated into one 60-dim vector (`join` / `split`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from policies.checkpoint import WEIGHTS_FILE, CheckpointError, read_config, write_config

ARCHITECTURE = "planner"
N_COMMANDS = 8  # RoadOption -1..6, embedded at index command + 1
_SPEED_SCALE = 10.0  # m/s; inputs are divided by these so the MLP sees values of order 1
_POINT_SCALE = 20.0  # m


@dataclass
class PlannerConfig:
    image_size: tuple[int, int] = (128, 256)  # (H, W) the image is resized to
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 96])  # stride-2 conv blocks
    hidden: int = 128
    n_modes: int = 32  # K, the size of the trajectory vocabulary
    sigma: float = 0.5  # std (m) of every mode's Gaussian, per coordinate
    path_points: int = 20
    speed_points: int = 10
    path_spacing: float = 1.0  # m between path points (default anchors)
    speed_dt: float = 0.25  # s between speed waypoints (default anchors)
    max_anchor_speed: float = 15.0  # m/s, fastest of the default straight anchors
    pool: tuple[int, int] = (2, 4)  # image feature grid kept before the MLP (keeps left / right apart)

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.pool = (int(self.pool[0]), int(self.pool[1]))
        self.channels = [int(c) for c in self.channels]
        if min(self.image_size) < 1 or min(self.pool) < 1:
            raise ValueError(f"image_size and pool must be positive, got {self.image_size}, {self.pool}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive ints, got {self.channels}")
        if self.hidden < 1 or self.n_modes < 1 or self.path_points < 1 or self.speed_points < 1:
            raise ValueError("hidden, n_modes, path_points and speed_points must be positive")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")

    @property
    def traj_dim(self) -> int:
        return 2 * (self.path_points + self.speed_points)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"], d["pool"] = list(self.image_size), list(self.pool)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlannerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PlannerConfig keys: {unknown}")
        return cls(**d)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    groups = 8 if c_out % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(groups, c_out), nn.GELU()
    )


class CompactPlanner(nn.Module):
    architecture = ARCHITECTURE

    def __init__(self, config: PlannerConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or PlannerConfig()
        chans = [3, *cfg.channels]
        self.encoder = nn.Sequential(*(_conv_block(a, b) for a, b in itertools.pairwise(chans)))
        self.image_proj = nn.Sequential(
            nn.Linear(cfg.channels[-1] * cfg.pool[0] * cfg.pool[1], cfg.hidden), nn.GELU()
        )
        self.measurements = nn.Sequential(
            nn.Linear(5, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.hidden)
        )
        self.command_embedding = nn.Embedding(N_COMMANDS, cfg.hidden)
        self.trunk = nn.Sequential(
            nn.Linear(3 * cfg.hidden, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.hidden), nn.GELU()
        )
        self.logit_head = nn.Linear(cfg.hidden, cfg.n_modes)
        self.offset_head = nn.Linear(cfg.hidden, cfg.n_modes * cfg.traj_dim)
        # Start every mode at its anchor: the offsets begin near zero and learn residuals.
        nn.init.normal_(self.offset_head.weight, std=1e-3)
        nn.init.zeros_(self.offset_head.bias)
        self.register_buffer("anchors", self.default_anchors(cfg))

    # ------------------------------------------------------------------------- trajectory layout
    @staticmethod
    def default_anchors(cfg: PlannerConfig) -> Tensor:
        """K straight-ahead trajectories at K speeds from 0 to `max_anchor_speed` (same path for all)."""
        k = cfg.n_modes
        path = torch.zeros(k, cfg.path_points, 2)
        path[..., 0] = cfg.path_spacing * torch.arange(1, cfg.path_points + 1)
        speeds = torch.linspace(0.0, cfg.max_anchor_speed, k) if k > 1 else torch.zeros(1)
        wps = torch.zeros(k, cfg.speed_points, 2)
        wps[..., 0] = speeds[:, None] * cfg.speed_dt * torch.arange(1, cfg.speed_points + 1)
        return CompactPlanner.join(path, wps)

    @staticmethod
    def join(path: Tensor, speed_waypoints: Tensor) -> Tensor:
        """(..., P, 2) and (..., S, 2) -> (..., 2P + 2S)."""
        return torch.cat([path.flatten(-2), speed_waypoints.flatten(-2)], dim=-1)

    @staticmethod
    def split(traj: Tensor, path_points: int = 20) -> tuple[Tensor, Tensor]:
        """(..., 2P + 2S) -> path (..., P, 2), speed waypoints (..., S, 2)."""
        n = 2 * path_points
        path = traj[..., :n].unflatten(-1, (path_points, 2))
        return path, traj[..., n:].unflatten(-1, (-1, 2))

    @torch.no_grad()
    def set_anchors(self, trajs: Tensor, iters: int = 25, seed: int = 0) -> Tensor:
        """Set the anchors to k-means centres of training trajectories (N, D) (k-means++ start, Lloyd).

        Deterministic for a given seed. Rows with non-finite values are dropped. Returns the anchors.
        """
        x = torch.as_tensor(trajs).detach().to("cpu", torch.float64).reshape(-1, self.config.traj_dim)
        x = x[torch.isfinite(x).all(dim=1)]
        k = self.config.n_modes
        if len(x) < k:
            raise ValueError(f"k-means needs at least n_modes={k} trajectories, got {len(x)}")
        gen = torch.Generator().manual_seed(seed)
        centres = x[torch.randint(len(x), (1,), generator=gen)]
        for _ in range(1, k):  # k-means++: the next centre with probability ~ squared distance
            d2 = torch.cdist(x, centres).min(dim=1).values.square()
            p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / len(d2))
            centres = torch.cat([centres, x[torch.multinomial(p, 1, generator=gen)]])
        for _ in range(iters):
            dist = torch.cdist(x, centres)
            assign = dist.argmin(dim=1)
            new = torch.zeros_like(centres).index_add_(0, assign, x)
            count = torch.bincount(assign, minlength=k)
            new = new / count.clamp(min=1)[:, None]
            empty = (count == 0).nonzero().flatten()
            if len(empty):  # re-seed empty clusters with the worst-fitted points
                worst = dist.gather(1, assign[:, None]).squeeze(1).topk(len(empty)).indices
                new[empty] = x[worst]
            if torch.equal(new, centres):
                break
            centres = new
        self.anchors.copy_(centres.to(self.anchors))
        return self.anchors

    # --------------------------------------------------------------------------------- forward
    def _device(self) -> torch.device:
        return self.anchors.device

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        """The fused features (B, hidden)."""
        dev, cfg = self._device(), self.config
        image = batch["image"].to(dev)
        # uint8 images are scaled to [0, 1]; floating images are taken as already in [0, 1]
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        if tuple(x.shape[-2:]) != cfg.image_size:
            x = F.interpolate(x, size=cfg.image_size, mode="bilinear", align_corners=False, antialias=True)
        feat = F.adaptive_avg_pool2d(self.encoder(x * 2.0 - 1.0), cfg.pool).flatten(1)
        speed = batch["speed"].to(dev, torch.float32).reshape(-1, 1) / _SPEED_SCALE
        points = batch["target_points"].to(dev, torch.float32).reshape(-1, 4) / _POINT_SCALE
        command = batch["command"].to(dev, torch.long).reshape(-1) + 1
        if command.numel() and (int(command.min()) < 0 or int(command.max()) >= N_COMMANDS):
            raise ValueError(f"command must be a RoadOption value in -1..{N_COMMANDS - 2}")
        fused = torch.cat(
            [
                self.image_proj(feat),
                self.measurements(torch.cat([speed, points], 1)),
                self.command_embedding(command),
            ],
            dim=1,
        )
        return self.trunk(fused)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """logits (B, K) and the modes' trajectories (B, K, D)."""
        h = self.encode(batch)
        offsets = self.offset_head(h).unflatten(-1, (self.config.n_modes, self.config.traj_dim))
        return {"logits": self.logit_head(h), "trajectories": self.anchors + offsets}

    # ------------------------------------------------------------------------------ likelihood
    def log_prob_from(self, out: dict[str, Tensor], traj: Tensor) -> Tensor:
        """Mixture log density of `traj` (B, D) or (B, N, D) given `forward`'s output: (B,) or (B, N)."""
        single = traj.dim() == 2
        t = traj.to(out["trajectories"]).unsqueeze(1) if single else traj.to(out["trajectories"])
        log_w = F.log_softmax(out["logits"].float(), dim=-1)  # (B, K)
        sigma = self.config.sigma
        z = (t.unsqueeze(2) - out["trajectories"].unsqueeze(1)) / sigma  # (B, N, K, D)
        const = self.config.traj_dim * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
        log_n = -0.5 * z.square().sum(-1) - const  # (B, N, K)
        lp = torch.logsumexp(log_w.unsqueeze(1) + log_n, dim=-1)
        return lp.squeeze(1) if single else lp

    def log_prob(self, batch: dict[str, Tensor], traj: Tensor) -> Tensor:
        """log pi(traj | observation): (B, D) -> (B,), (B, N, D) -> (B, N)."""
        return self.log_prob_from(self(batch), traj)

    def sample(
        self,
        batch: dict[str, Tensor],
        n: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """n actions per observation: a mode drawn from softmax(logits / temperature), returned as its mean.

        `log_probs` are the returned trajectories' log densities under the model (temperature 1), with
        grad when grad is enabled (wrap rollouts in `torch.no_grad()`). temperature 0 picks the argmax.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        out = self(batch)
        logits = out["logits"].detach().float()
        if temperature == 0:
            modes = logits.argmax(-1, keepdim=True).expand(-1, n).contiguous()
        else:
            probs = F.softmax(logits / temperature, dim=-1)
            modes = torch.multinomial(probs, n, replacement=True, generator=generator)
        idx = modes.unsqueeze(-1).expand(-1, -1, self.config.traj_dim)
        trajs = out["trajectories"].detach().gather(1, idx)
        return {"trajectories": trajs, "modes": modes, "log_probs": self.log_prob_from(out, trajs)}

    def predict(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The most likely mode's path (B, P, 2) and speed waypoints (B, S, 2), and `mode` (B,)."""
        out = self(batch)
        mode = out["logits"].argmax(-1)
        traj = out["trajectories"][torch.arange(len(mode), device=mode.device), mode]
        path, wps = self.split(traj, self.config.path_points)
        return {"path": path, "speed_waypoints": wps, "mode": mode}

    # -------------------------------------------------------------------------------- training
    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """CE towards the anchor nearest the target + smooth-L1 of that mode's trajectory, averaged over
        the samples with action labels (weight action_weight * has_path * has_speed_waypoints > 0)."""
        dev = self._device()
        out = self(batch)
        b = out["logits"].shape[0]
        ones = torch.ones(b, device=dev)
        weight = batch.get("action_weight", ones).to(dev, torch.float32).reshape(b)
        for name in ("has_path", "has_speed_waypoints"):
            weight = weight * batch.get(name, ones).to(dev, torch.float32).reshape(b)
        valid = weight > 0
        target = self.join(
            batch["path"].to(dev, torch.float32), batch["speed_waypoints"].to(dev, torch.float32)
        )
        # masked samples may carry zeros or NaN as labels: neutralise them so no NaN reaches the grads
        target = torch.where(valid[:, None], torch.nan_to_num(target), self.anchors[0])
        nearest = torch.cdist(target, self.anchors).argmin(dim=1)
        cls = F.cross_entropy(out["logits"], nearest, reduction="none")
        chosen = out["trajectories"][torch.arange(b, device=dev), nearest]
        reg = F.smooth_l1_loss(chosen, target, reduction="none").mean(-1)
        n_action = valid.sum()
        denom = n_action.clamp(min=1).float()
        cls_loss = (weight * cls).sum() / denom
        reg_loss = (weight * reg).sum() / denom
        return {"loss": cls_loss + reg_loss, "cls_loss": cls_loss, "reg_loss": reg_loss, "n_action": n_action}

    # ------------------------------------------------------------------------------ checkpoints
    def save(self, folder: str | Path, meta: dict | None = None) -> Path:
        folder = Path(folder)
        write_config(folder, ARCHITECTURE, self.config.to_dict(), meta)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> CompactPlanner:
        folder = Path(folder)
        doc = read_config(folder, expect=ARCHITECTURE)
        try:
            config = PlannerConfig.from_dict(doc["config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{folder}: bad planner config: {e}") from e
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{folder} has no {WEIGHTS_FILE}")
        model = cls(config)
        state = load_file(str(weights))
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        mismatched = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
        if missing or unexpected or mismatched:
            raise CheckpointError(
                f"{weights} does not match its config: missing {missing}, unexpected {unexpected}, "
                f"shape mismatch {mismatched}"
            )
        model.load_state_dict(state, strict=True)
        return model.to(device).eval()
