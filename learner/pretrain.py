"""Imitation pre-training of a policy (the VLA or the compact planner) on expert data.

One process on a CPU (or one GPU): bucket-weighted sampling with Action Dreaming samples mixed in
(`learner.data`), the policy's own loss (`training_loss`: language cross-entropy + smooth-L1 on
waypoints for the VLA), AdamW with linear warm-up and a cosine schedule, TensorBoard logs and a
`metrics.jsonl`, a checkpoint at the end of every epoch, resume after an interruption, a progress bar,
and the training curve as a figure.

Run folder layout:
    config.yaml               the resolved configuration
    checkpoints/epoch_NNN/    policy checkpoints (`policies.checkpoint`), `latest` names the newest
    train_state.pt            optimiser, schedule, epoch and step of the newest checkpoint (with
                              `ema_decay`: also the trained weights and their average)
    metrics.jsonl             one line per logged step
    tensorboard/              TensorBoard event files
    training_curve.png        losses and learning rate over steps
"""

from __future__ import annotations

import json
import math
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from envs.buckets import TICK_DT
from learner.data import BatchBuilder, FrameBank, bucket_weights, with_takeover_share
from learner.weight_average import WeightAverage
from policies.checkpoint import load_policy, read_config, resolve_checkpoint
from policies.vla_config import LOSS_TERMS

STATE_FILE = "train_state.pt"


class PretrainError(ValueError):
    pass


@dataclass
class TrainConfig:
    epochs: int = 4
    samples_per_epoch: int = 0  # 0: the number of frames
    frame_stride: int = 1  # load every k-th frame of each recorded segment (memory: ~55 KB a frame)
    # hold the images' pixels (98 KB a 256 x 128 frame) instead of their stored bytes (~6 KB as JPEG), which
    # are decoded per batch (a few per cent of a step)
    decode_images: bool = False
    frame_hz: float = 0.0  # > 0: each dataset's own stride to this rate (mixes 5 Hz and 20 Hz data)
    takeover_frame_hz: float = 0.0  # > 0: the rate of takeover datasets alone (their segments are short)
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    dream_share: float = 0.2  # share of samples replaced by Action Dreaming samples
    bucket_weights: dict[str, float] = field(default_factory=dict)
    takeover_share: float = 0.0  # > 0: share of the draws from takeover datasets (else by buckets alone)
    loss_weights: dict[str, float] = field(default_factory=dict)  # VLA: policies.vla_config.LOSS_TERMS
    # a VLA with camera history (vision.history_s): share of the samples whose earlier image is replaced by
    # the current one (ChauffeurNet's past-motion dropout; learner.data.BatchBuilder says why)
    history_dropout: float = 0.5
    seed: int = 0
    log_every: int = 10
    threads: int = 0  # torch threads (0: leave torch's default)
    max_minutes: float = 0.0  # stop (with a checkpoint) after this much training time, the cosine
    # schedule ending with it if the steps take longer (budget_step); 0: no limit
    # train on the commentary with each template's first phrasing only (policies.language.canonical_commentary
    # says why); off: the labels' phrasing variety, as SimLingo
    canonical_language: bool = False
    # VLA: share of the recorded frames trained without their commentary, so that the waypoints also come
    # from the image alone (learner.data.BatchBuilder says why; drive so: --agent-arg commentary=false)
    commentary_dropout: float = 0.0
    # VLA: share of the samples whose commentary speaks a dreamed future (faster / slower / stop / keep, lane
    # changes) and whose target is that future, so that the waypoints follow the commentary (learner.data
    # says why; benchmarks/language_grounding.py measures it)
    commentary_dream_share: float = 0.0
    # > 0: keep an exponential moving average of the trainable weights with this decay (0.999: about the
    # last 1,000 steps; learner.weight_average); the checkpoints hold the average (what drives and is
    # evaluated), the train state the trained weights to resume from
    ema_decay: float = 0.0


@dataclass
class PretrainConfig:
    policy: dict[str, Any] = field(default_factory=lambda: {"architecture": "vla", "preset": "tiny"})
    train: TrainConfig = field(default_factory=TrainConfig)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PretrainConfig:
        unknown = sorted(set(d) - {"policy", "train"})
        if unknown:
            raise PretrainError(f"unknown pre-training config keys: {', '.join(unknown)}")
        train = d.get("train") or {}
        names = {f.name for f in fields(TrainConfig)}
        bad = sorted(set(train) - names)
        if bad:
            raise PretrainError(
                f"unknown keys under 'train': {', '.join(bad)}; known: {', '.join(sorted(names))}"
            )
        policy = d.get("policy") or {"architecture": "vla", "preset": "tiny"}
        if "checkpoint" in policy:
            policy = _checkpoint_policy(policy)
        if policy.get("architecture") not in ("vla", "planner"):
            raise PretrainError(
                f"policy.architecture must be 'vla' or 'planner', got {policy.get('architecture')!r}"
            )
        tc = TrainConfig(**train)
        if tc.loss_weights and policy.get("architecture") != "vla":
            raise PretrainError(f"train.loss_weights applies to the VLA ({', '.join(LOSS_TERMS)})")
        bad_w = sorted(set(tc.loss_weights) - set(LOSS_TERMS))
        if bad_w:
            raise PretrainError(
                f"unknown train.loss_weights {', '.join(bad_w)}; known: {', '.join(LOSS_TERMS)}"
            )
        if tc.frame_stride < 1:
            raise PretrainError(f"train.frame_stride must be a positive integer, got {tc.frame_stride}")
        if not 0.0 <= tc.takeover_share <= 1.0:
            raise PretrainError(f"train.takeover_share must be in [0, 1], got {tc.takeover_share}")
        if tc.frame_hz < 0 or (tc.frame_hz > 0 and tc.frame_stride != 1):
            raise PretrainError(
                f"train.frame_hz must be >= 0 and is an alternative to frame_stride (got frame_hz "
                f"{tc.frame_hz}, frame_stride {tc.frame_stride})"
            )
        for name in ("history_dropout", "commentary_dropout", "commentary_dream_share"):
            if not 0.0 <= getattr(tc, name) <= 1.0:
                raise PretrainError(f"train.{name} must be in [0, 1], got {getattr(tc, name)}")
        if tc.dream_share + tc.commentary_dream_share > 1.0:
            raise PretrainError(
                f"train.dream_share + commentary_dream_share must be at most 1, got "
                f"{tc.dream_share} + {tc.commentary_dream_share}"
            )
        for name in ("commentary_dropout", "commentary_dream_share"):
            if getattr(tc, name) and policy.get("architecture") != "vla":
                raise PretrainError(f"train.{name} applies to the VLA (the planner has no commentary)")
        if not 0.0 <= tc.ema_decay < 1.0:
            raise PretrainError(f"train.ema_decay must be in [0, 1) (0: off), got {tc.ema_decay}")
        if tc.takeover_frame_hz < 0:
            raise PretrainError(f"train.takeover_frame_hz must be >= 0, got {tc.takeover_frame_hz}")
        return PretrainConfig(policy=dict(policy), train=tc)

    @staticmethod
    def load(path: str | Path | None) -> PretrainConfig:
        if path is None:
            return PretrainConfig()
        p = Path(path)
        if not p.is_file():
            raise PretrainError(f"config file {p} does not exist")
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise PretrainError(f"{p} is not valid YAML: {e}") from e
        if not isinstance(doc, dict):
            raise PretrainError(f"{p} must hold a mapping with 'policy' and 'train'")
        return PretrainConfig.from_dict(doc)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "train": asdict(self.train)}

    def starting_from(self, checkpoint: str | Path, check_architecture: bool = True) -> PretrainConfig:
        """This configuration with its policy section replaced by `checkpoint: PATH` (`takeover pretrain
        --init`); with `check_architecture`, this policy section's architecture must be the checkpoint's."""
        policy: dict[str, Any] = {"checkpoint": str(checkpoint)}
        if check_architecture:
            policy["architecture"] = self.policy["architecture"]
        return PretrainConfig.from_dict({"policy": policy, "train": asdict(self.train)})


def _checkpoint_policy(policy: dict[str, Any]) -> dict[str, Any]:
    """A `policy` section that starts from a checkpoint's weights (`checkpoint: PATH`, the CLI's --init):
    the architecture and model config are the checkpoint's, so the section may name the architecture
    (checked) and nothing else. The path is resolved to the checkpoint folder, which the run's
    config.yaml then records."""
    extra = sorted(set(policy) - {"checkpoint", "architecture"})
    if extra:
        raise PretrainError(
            f"policy.checkpoint starts from that checkpoint's architecture and config; leave out "
            f"policy.{', policy.'.join(extra)}"
        )
    folder = resolve_checkpoint(policy["checkpoint"])
    arch = read_config(folder)["architecture"]
    if policy.get("architecture", arch) != arch:
        raise PretrainError(
            f"policy.checkpoint {folder} holds a {arch!r} policy, but policy.architecture is "
            f"{policy['architecture']!r}"
        )
    return {"architecture": arch, "checkpoint": str(folder)}


def build_policy(spec: dict[str, Any], bank: FrameBank) -> torch.nn.Module:
    """The policy to train: a fresh one from the config's `policy` section (tokenizer / anchors fitted
    to the data), or, with `policy.checkpoint`, that checkpoint's (a fine-tune: a DAgger round on
    aggregated data, or a longer schedule; the optimiser and schedule start afresh)."""
    arch = spec["architecture"]
    if "checkpoint" in spec:
        model = load_policy(spec["checkpoint"])
        _check_vocabulary(model, bank, spec["checkpoint"])
        return model
    if arch == "vla":
        from policies.tokenizer import load_tokenizer, train_label_tokenizer
        from policies.vla import VLA
        from policies.vla_config import VLAConfig, preset

        cfg = preset(spec.get("preset", "tiny"))
        if "config" in spec:
            merged = cfg.to_dict()
            for key, value in spec["config"].items():
                if isinstance(value, dict) and isinstance(merged.get(key), dict):
                    merged[key] = {**merged[key], **value}
                else:
                    merged[key] = value
            cfg = VLAConfig.from_dict(merged)
        tok = load_tokenizer(cfg.llm.path) if cfg.llm.path else train_label_tokenizer(bank.languages())
        return VLA(cfg, tokenizer=tok)
    from policies.planner import CompactPlanner, PlannerConfig

    model = CompactPlanner(PlannerConfig.from_dict(spec.get("config", {})))
    trajs = bank.trajectories()
    if len(trajs):
        model.set_anchors(torch.from_numpy(trajs))
    return model


def _check_vocabulary(model: Any, bank: FrameBank, where: str) -> None:
    """A checkpoint's own tokenizer must cover the data's commentary: a tokenizer trained on the label
    vocabulary maps a word it never saw to <unk>, which would train the policy to say <unk>."""
    tok = getattr(model, "tokenizer", None)
    unk = getattr(tok, "unk_token_id", None)
    if tok is None or unk is None:
        return
    texts = sorted({t for t in bank.languages() if t})
    ids = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
    for text, seq in zip(texts, ids, strict=True):
        if unk in seq:
            raise PretrainError(
                f"the commentary {text!r} in the data has words that the tokenizer of {where} does not "
                f"know; train a fresh policy on this data instead"
            )


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to `min_ratio`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def budget_step(step: int, total: int, minutes: float, max_minutes: float) -> int:
    """The schedule's step under a time budget: the further on of the step count and the share of
    `max_minutes` used, so that the cosine reaches its floor when the budget ends even if the run
    would have needed more time for `total` steps (0 minutes: steps only)."""
    if max_minutes <= 0:
        return step
    return max(step, round(total * min(minutes / max_minutes, 1.0)))


def latest_checkpoint(run: Path) -> Path | None:
    """The run's newest checkpoint (None before the first; a pointer to a missing one is an error)."""
    pointer = run / "checkpoints" / "latest"
    return resolve_checkpoint(pointer) if pointer.is_file() else None


def _save_epoch(
    run: Path, name: str, model: Any, opt: torch.optim.Optimizer, sched: Any, state: dict,
    ema: WeightAverage | None = None,
) -> Path:  # fmt: skip
    ckpt = run / "checkpoints" / name
    with ema.applied() if ema is not None else nullcontext():
        model.save(ckpt, meta={"epoch": state["epoch"], "step": state["step"]})
    extra = {}
    if ema is not None:  # the checkpoint holds the average; resuming needs the trained weights too
        extra = {"ema": ema.state_dict(), "trained": [p.detach().clone() for p in ema.params]}
    tmp = run / (STATE_FILE + ".tmp")
    saved = {**state, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "checkpoint": name}
    torch.save({**saved, **extra}, tmp)
    tmp.replace(run / STATE_FILE)
    pointer = run / "checkpoints" / "latest"
    pointer.with_suffix(".tmp").write_text(name)
    pointer.with_suffix(".tmp").replace(pointer)
    return ckpt


def plot_curve(run: Path) -> Path | None:
    """training_curve.png from metrics.jsonl: loss parts (smoothed) and the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    steps = np.array([r["step"] for r in rows])
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    for key in ("loss", "language", "path", "speed", "desired_speed", "cls_loss", "reg_loss"):
        if key in rows[0]:
            v = np.array([r[key] for r in rows], float)
            ax.plot(steps, v, alpha=0.25)
            k = max(len(v) // 30, 1)
            smooth = np.convolve(v, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, label=key, color=ax.lines[-1].get_color())
    ax.set_yscale("log")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    epochs = sorted({r["epoch"] for r in rows})
    for e in epochs[1:]:
        first = next(r["step"] for r in rows if r["epoch"] == e)
        ax.axvline(first, color="grey", lw=0.5, ls="--")
    ax_lr.plot(steps, [r["lr"] for r in rows], color="k")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    minutes = rows[-1].get("minutes")
    policy = ""
    if (run / "config.yaml").is_file():
        spec = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("policy", {})
        policy = " ".join(str(spec[k]) for k in ("architecture", "preset") if k in spec)
    title = f"pre-training {policy}: {run.name}, {rows[-1]['step']} steps"
    title += f", {minutes:.1f} min" if minutes else ""
    ax.set_title(title)
    fig.tight_layout()
    out = run / "training_curve.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def pretrain(data: list[str | Path], config: PretrainConfig, out: str | Path, resume: bool = False,
             progress: bool = True, stop: threading.Event | None = None,
             loaded: threading.Event | None = None) -> Path:  # fmt: skip
    """Train and return the run folder. With `resume`, continue from the run's newest checkpoint. When
    `stop` is set (the CLI sets it on SIGTERM) the run ends after the current step with a checkpoint, as
    at the end of `max_minutes`. `loaded` is set once the data is in memory and the model built (the CLI
    exits at once on a SIGTERM before that: loading takes minutes and has nothing to save)."""
    from torch.utils.tensorboard import SummaryWriter

    run = Path(out)
    tc = config.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    previous = latest_checkpoint(run) if resume else None
    if resume and previous is None and (run / STATE_FILE).exists():
        raise PretrainError(f"{run}: train state without a checkpoint; cannot resume")
    if not resume and latest_checkpoint(run) is not None:
        raise PretrainError(f"{run} already holds a training run; pass --resume or another --out")
    run.mkdir(parents=True, exist_ok=True)
    written = config.to_dict()
    if previous is not None and (run / "config.yaml").is_file():
        # a resumed run's policy is its own checkpoint's: keep the recorded section (it may name the
        # checkpoint the run started from, which a --resume without --init would otherwise overwrite)
        recorded = yaml.safe_load((run / "config.yaml").read_text()) or {}
        written["policy"] = recorded.get("policy", written["policy"])
    (run / "config.yaml").write_text(yaml.safe_dump(written, sort_keys=False))

    bank = FrameBank.load(
        data, progress=progress, stride=tc.frame_stride, hz=tc.frame_hz, takeover_hz=tc.takeover_frame_hz,
        decode_images=tc.decode_images,
    )  # fmt: skip
    if tc.canonical_language:
        bank.canonicalise_language()
    probs = bucket_weights(bank.frames, tc.bucket_weights)
    if tc.takeover_share > 0:
        probs = with_takeover_share(probs, bank.from_takeover, tc.takeover_share)
    torch.manual_seed(tc.seed)
    model = load_policy(previous) if previous is not None else build_policy(config.policy, bank)
    model.train()
    if loaded is not None:
        loaded.set()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc.lr,
    )
    per_epoch = max((tc.samples_per_epoch or len(bank)) // tc.batch_size, 1)
    total = per_epoch * tc.epochs
    state = {"epoch": 0, "step": 0, "minutes": 0.0}
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: lr_factor(
            budget_step(s, total, state["minutes"], tc.max_minutes), total, tc.warmup_steps, tc.min_lr_ratio
        ),
    )
    ema = WeightAverage(model, tc.ema_decay) if tc.ema_decay else None
    if previous is not None:
        saved = torch.load(run / STATE_FILE, weights_only=False)
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = {k: saved[k] for k in state}
        if "trained" in saved:  # a run with a weight average: its checkpoint holds the average
            with torch.no_grad():
                for p, t in zip(params, saved["trained"], strict=True):
                    p.copy_(t)
        if ema is not None and "ema" in saved:
            ema.load_state_dict(saved["ema"])
        print(f"resuming from {previous.name} (epoch {state['epoch']}, step {state['step']})")
    history = int(getattr(model, "history_ticks", 0))
    builder = BatchBuilder(
        bank, tc.dream_share, seed=tc.seed + state["epoch"], bev=getattr(model, "bev_head", None) is not None,
        history_ticks=history, history_dropout=tc.history_dropout, commentary_dropout=tc.commentary_dropout,
        commentary_dream_share=tc.commentary_dream_share,
    )  # fmt: skip
    if builder.previous is not None:
        ticks = np.array([f.tick for f in bank.frames])
        back = (ticks - ticks[builder.previous]) * TICK_DT
        median = float(np.median(back[back > 0])) if (back > 0).any() else 0.0
        print(
            f"camera history {history * TICK_DT:.2f} s: the previous image lies {median:.2f} s back on "
            f"median; {np.mean(back == 0):.1%} of the frames are the first of their drive (their own image)"
        )
    writer = SummaryWriter(str(run / "tensorboard"), purge_step=state["step"] or None)
    metrics = (run / "metrics.jsonl").open("a")
    n_params = sum(p.numel() for p in params)
    print(
        f"{len(bank)} frames, {n_params / 1e6:.2f} M trainable parameters, "
        f"{per_epoch} steps x {tc.epochs} epochs"
    )
    loss_args = {"weights": tc.loss_weights} if tc.loss_weights else {}  # the planner's loss takes none
    halt = ""  # why the run ends before its last epoch
    t_start = time.perf_counter() - state["minutes"] * 60
    # a run stopped mid-epoch (max_minutes, SIGTERM) resumes at the batch after its last one: the epoch's
    # sample order is drawn from (seed, epoch), so it is the one the interrupted run was going through
    first = min(max(state["step"] - state["epoch"] * per_epoch, 0), per_epoch) if previous else 0
    try:
        for epoch in range(state["epoch"], tc.epochs):
            rng = np.random.default_rng([tc.seed, epoch])
            order = rng.choice(len(bank), size=per_epoch * tc.batch_size, p=probs)
            bar = tqdm(
                range(first, per_epoch), desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not progress,
                unit="step", initial=first, total=per_epoch,
            )  # fmt: skip
            first = 0
            for b in bar:
                batch = builder.build(order[b * tc.batch_size : (b + 1) * tc.batch_size])
                losses = model.training_loss(batch, **loss_args)
                opt.zero_grad(set_to_none=True)
                losses["loss"].backward()
                if tc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update()
                state["step"] += 1
                state["minutes"] = (time.perf_counter() - t_start) / 60
                if tc.max_minutes and state["minutes"] >= tc.max_minutes:
                    halt = "max_minutes"
                elif stop is not None and stop.is_set():
                    halt = "stopped from outside"
                if state["step"] % tc.log_every == 0 or b == per_epoch - 1 or halt:
                    row = {k: float(v.detach()) for k, v in losses.items()}
                    row.update(
                        step=state["step"],
                        epoch=epoch + 1,
                        lr=sched.get_last_lr()[0],
                        minutes=state["minutes"],
                    )
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                    for k, v in row.items():
                        if k not in ("step", "epoch"):
                            writer.add_scalar(f"pretrain/{k}", v, state["step"])
                    bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.1e}")
                if halt:
                    break
            state["epoch"] = epoch + 1 if not halt else epoch
            name = f"epoch_{epoch + 1:03d}" if not halt else f"epoch_{epoch + 1:03d}_partial"
            _save_epoch(run, name, model, opt, sched, state, ema)
            if halt:
                minutes = state["minutes"]
                print(f"stopped after {minutes:.1f} min ({halt}); --resume continues epoch {epoch + 1}")
                break
    finally:
        metrics.close()
        writer.close()
        plot_curve(run)
    return run
