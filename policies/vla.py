"""SimLingo-style VLA: vision encoder -> projector -> Qwen2-architecture LLM (LoRA via peft).

One sequence per sample, left-padded in a batch:

    <image> x T | "Current speed: v m/s. Target waypoint: <target_point><target_point>." [instruction]
    | answer tokens (commentary) </s> | <path_query> x 20 | <speed_query> x 10

Image placeholders take the projected image features, target-point placeholders an MLP embedding of
the two target points, query placeholders learned query vectors. The LLM generates the answer; the 30
queries then pass through it in one forward and two MLP heads decode per-step deltas whose cumulative
sums are the path (1 m apart) and the speed waypoints (0.25 s apart). Training: cross-entropy on the
answer + smooth-L1 on the waypoints, the latter weighted by `action_weight` (0 on pre-takeover samples).
With `vision.history_s` the batch also carries `previous_image`, the camera image that much earlier.

GRPO needs, for one observation, G answers sampled at a temperature with their log-probabilities under
the current and a reference adapter, and the waypoints each answer leads to: `sample`. The same
log-probabilities are recomputed with gradients by `answer_log_probs` (teacher forcing).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from policies.bev import BEV_SHAPE
from policies.checkpoint import WEIGHTS_FILE, CheckpointError, read_config, write_config
from policies.lean_decoder import LeanCache, LeanQwen2
from policies.prompts import driving_prompt
from policies.tokenizer import (
    BOS,
    EOS,
    IMAGE_TOKEN,
    PATH_QUERY,
    SPEED_QUERY,
    TARGET_POINT_TOKEN,
    load_tokenizer,
    save_tokenizer,
    train_label_tokenizer,
)  # fmt: skip
from policies.vla_config import LOSS_TERMS, VLAConfig, tiny_config

ADAPTERS_DIR = "adapters"
REFERENCE = "reference"


def smooth_l1_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(pred, target, reduction="none").flatten(1).mean(1)


# The desired-speed term leaves out frames slower than this: starting off, the expert's first waypoints
# ask for ~0.5 m/s, next to the controller's 0.4 m/s brake threshold, and fitting them closely taught the
# policy to stay standing (4 of 47 evaluation routes never started).
DESIRED_SPEED_MIN_EGO_SPEED = 3.0  # m/s


def desired_speed_of(speed_waypoints: torch.Tensor, dt: float = 0.25) -> torch.Tensor:
    """(B, T, 2) speed waypoints -> (B,) the controller's desired speed (`desired_speed_from_waypoints`)."""
    return (speed_waypoints[:, 2] - speed_waypoints[:, 0]).norm(dim=-1) / (2.0 * dt)


def masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean that is 0 (with a gradient path) when every weight is 0."""
    weights = weights.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


class VisionEncoder(nn.Module):
    """Image (B, 3, H, W) uint8 -> (B, T, C) tokens on a fixed grid. With `vision.history_s` the image
    of that many seconds earlier comes too and the two are stacked as six input channels; with
    `vision.crop` the encoder sees that part of the image, resized to `vision.image_size`; with
    `vision.fovea` a window of the image is encoded as well and its tokens follow the whole view's."""

    def __init__(self, cfg: VLAConfig) -> None:
        super().__init__()
        v = cfg.vision
        v.validate()
        self.image_size = tuple(v.image_size)
        self.crop = tuple(v.crop) if v.crop is not None else None
        self.fovea = tuple(v.fovea) if v.fovea is not None else None
        self.fovea_size = tuple(v.fovea_size) if v.fovea_size is not None else None
        self.fovea_grid = tuple(v.fovea_grid)
        self.grid = tuple(v.token_grid)
        self.history = v.history_s > 0
        channels = 6 if self.history else 3
        if v.type == "resnet":
            from transformers import ResNetConfig, ResNetModel

            self.model = ResNetModel(
                ResNetConfig(
                    num_channels=channels,
                    embedding_size=v.embedding_size,
                    hidden_sizes=list(v.hidden_sizes),
                    depths=list(v.depths),
                    layer_type="basic",
                )
            )
            self.channels = v.hidden_sizes[-1]
        elif v.type == "vit":
            from transformers import ViTConfig, ViTModel

            self.model = ViTModel(
                ViTConfig(
                    hidden_size=v.hidden_size, num_hidden_layers=v.num_hidden_layers,
                    num_attention_heads=v.num_attention_heads, intermediate_size=v.intermediate_size,
                    image_size=list(v.image_size), patch_size=v.patch_size, num_channels=channels,
                ),
                add_pooling_layer=False,
            )  # fmt: skip
            self.channels = v.hidden_size
        elif v.type == "pretrained":
            from transformers import AutoModel

            if not v.path or not Path(v.path).is_dir():
                raise CheckpointError(f"vision.path {v.path!r} is not a folder with a pretrained model")
            model = AutoModel.from_pretrained(
                v.path, local_files_only=True, trust_remote_code=v.trust_remote_code
            )
            self.model = getattr(model, "vision_model", model)
            self.channels = int(self.model.config.hidden_size)
        else:
            raise CheckpointError(f"unknown vision encoder type {v.type!r} (resnet, vit, pretrained)")
        self.is_conv = v.type == "resnet"
        # oneDNN's convolutions run about 1.3x faster in channels-last on a CPU, but its 1x1 stride-2
        # weight gradient (the ResNet shortcuts) in that layout writes out of bounds when a layer has fewer
        # input channels than its SIMD block (16 floats with AVX-512; oneDNN issue 6035): heap corruption
        # or wrong gradients. Narrower encoders (the tests' small ones) stay in NCHW.
        self.channels_last = self.is_conv and min(v.embedding_size, *v.hidden_sizes) >= 16

    @property
    def num_tokens(self) -> int:
        fovea = self.fovea_grid[0] * self.fovea_grid[1] if self.fovea is not None else 0
        return self.grid[0] * self.grid[1] + fovea

    def forward(self, image: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        if self.history:
            if previous is None:
                raise ValueError(
                    "this VLA sees the camera history (vision.history_s): the batch needs 'previous_image'"
                )
            image = torch.cat([image, previous.to(image.device)], dim=1)
        tokens = self._encode(_window(image, self.crop, "crop"), self.image_size, self.grid)
        if self.fovea is None:
            return tokens
        window = _window(image, self.fovea, "fovea")
        # a ResNet takes the window at its own size; a ViT's position embeddings fix its input size
        size = self.fovea_size or (tuple(window.shape[-2:]) if self.is_conv else self.image_size)
        detail = self._encode(window, size, self.fovea_grid)
        return torch.cat([tokens, detail], dim=1)

    def _encode(self, image: torch.Tensor, size: tuple[int, ...], grid: tuple[int, ...]) -> torch.Tensor:
        x = image.float() / 255.0
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = (x - 0.5) / 0.5
        x = x.to(next(self.model.parameters()).dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.model(pixel_values=x).last_hidden_state
        if not self.is_conv:  # (B, N, C) patch tokens, after a CLS token if there is one -> grid
            patch = getattr(self.model.config, "patch_size", 14)
            rows, cols = size[0] // patch, size[1] // patch
            out = out[:, out.shape[1] - rows * cols :]
            out = out.transpose(1, 2).reshape(out.shape[0], -1, rows, cols)
        out = F.adaptive_avg_pool2d(out, grid)
        return out.flatten(2).transpose(1, 2)


def _window(image: torch.Tensor, window: tuple[int, ...] | None, name: str) -> torch.Tensor:
    """The (top, left, height, width) window of a (B, C, H, W) image; the whole image for None."""
    if window is None:
        return image
    top, left, height, width = window
    if top + height > image.shape[-2] or left + width > image.shape[-1]:
        raise ValueError(
            f"vision.{name} {window} (top, left, height, width) reaches outside the "
            f"{image.shape[-2]} x {image.shape[-1]} camera image"
        )
    return image[..., top : top + height, left : left + width]


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class BEVHead(nn.Module):
    """Image tokens (B, T, C) -> BEV occupancy logits (B, *BEV_SHAPE): each token squeezed to a few
    channels, then one linear map from the whole token grid (where an object lies on the grid decides
    which cells it fills)."""

    def __init__(self, channels: int, tokens: int, squeeze: int = 16) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Linear(channels, squeeze), nn.GELU())
        self.out = nn.Linear(tokens * squeeze, math.prod(BEV_SHAPE))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.squeeze(tokens).flatten(1)).reshape(-1, *BEV_SHAPE)


@dataclass
class Packed:
    """A left-padded batch of VLA sequences."""

    ids: torch.Tensor  # (B, L) token ids (placeholders included)
    mask: torch.Tensor  # (B, L) 1 = real token
    answer: torch.Tensor  # (B, L) True where the token is part of the answer (incl. </s>)


@dataclass
class SampleResult:
    answers: list[list[int]]  # token ids of each sampled answer (with </s> when it ended)
    texts: list[str]
    log_probs: torch.Tensor  # (N,) sum of answer-token log-probs under the current adapter
    ref_log_probs: torch.Tensor | None  # (N,) same under the reference adapter (None: no reference)
    path: torch.Tensor  # (N, 20, 2)
    speed_waypoints: torch.Tensor  # (N, 10, 2)


class VLA(nn.Module):
    architecture = "vla"

    def __init__(self, config: VLAConfig | None = None, tokenizer: Any = None) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model
        from transformers import Qwen2Config, Qwen2ForCausalLM

        self.config = cfg = config or tiny_config()
        if tokenizer is None:
            tokenizer = load_tokenizer(cfg.llm.path) if cfg.llm.path else train_label_tokenizer()
        self.tokenizer = tokenizer
        if cfg.llm.path:
            llm = _pretrained_qwen2(cfg.llm.path)
        else:
            c = cfg.llm
            llm = Qwen2ForCausalLM(
                Qwen2Config(
                    vocab_size=c.vocab_size or len(tokenizer),
                    hidden_size=c.hidden_size,
                    intermediate_size=c.intermediate_size,
                    num_hidden_layers=c.num_hidden_layers,
                    num_attention_heads=c.num_attention_heads,
                    num_key_value_heads=c.num_key_value_heads,
                    max_position_embeddings=c.max_position_embeddings,
                    tie_word_embeddings=True,
                    bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                )
            )
        if llm.get_input_embeddings().num_embeddings < len(tokenizer):
            llm.resize_token_embeddings(len(tokenizer))
        lora = LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules if isinstance(cfg.lora.target_modules, str)
            else list(cfg.lora.target_modules),
        )  # fmt: skip
        self.lora_config = lora
        with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            self.llm = get_peft_model(llm, lora)
        d = llm.config.hidden_size
        self.vision = VisionEncoder(cfg)
        self.projector = _mlp(self.vision.channels, d, d)
        self.target_point_mlp = _mlp(2, d, d)
        self.queries = nn.Parameter(torch.randn(cfg.path_points + cfg.speed_points, d) * 0.02)
        self.path_head = _mlp(d, cfg.head_hidden, 2)
        self.speed_head = _mlp(d, cfg.head_hidden, 2)
        self.bev_head = BEVHead(self.vision.channels, self.vision.num_tokens) if cfg.bev_head else None
        self.set_base_trainable(cfg.lora.train_base)
        tid = tokenizer.convert_tokens_to_ids
        self.ids = {
            t: int(tid(t)) for t in (IMAGE_TOKEN, TARGET_POINT_TOKEN, PATH_QUERY, SPEED_QUERY, BOS, EOS)
        }
        self.pad_id = int(tokenizer.pad_token_id)
        self.merged = False
        self._lean: LeanQwen2 | None = None  # set by merge_for_inference
        # placeholders and padding are never generated: the answer distribution excludes them
        banned = [self.ids[t] for t in (IMAGE_TOKEN, TARGET_POINT_TOKEN, PATH_QUERY, SPEED_QUERY, BOS)]
        self.register_buffer("banned_ids", torch.tensor([*banned, self.pad_id]), persistent=False)
        self._prompt_cache: dict[str, list[int]] = {}
        if cfg.dtype == "bfloat16":
            self.to(torch.bfloat16)

    # ------------------------------------------------------------------ parameters
    def set_base_trainable(self, train_base: bool) -> None:
        """LoRA adapters always train; the LLM's base weights only with `train_base`."""
        for name, p in self.llm.named_parameters():
            if "lora_" not in name:
                p.requires_grad_(train_base)
            elif f".{REFERENCE}." in name:
                p.requires_grad_(False)

    def lora_parameters(self) -> Iterator[nn.Parameter]:
        return (p for n, p in self.llm.named_parameters() if "lora_" in n and f".{REFERENCE}." not in n)

    def _causal_lm(self) -> nn.Module:
        return self.llm if self.merged else self.llm.get_base_model()

    def _decoder(self) -> nn.Module:
        return self._causal_lm().model

    def _embed(self) -> nn.Module:
        return self._causal_lm().get_input_embeddings()

    def _lm_head(self) -> nn.Module:
        return self._causal_lm().lm_head

    def merge_for_inference(self) -> VLA:
        """Fold the active LoRA adapter into the LLM and drop peft's wrappers (a tiny model's decision on
        one CPU thread: 38 -> 25 ms) and set up the lean decoder (`policies.lean_decoder`) for one observation
        at a time. The model can then only drive: no saving, training or adapters."""
        if not self.merged:
            self.llm = self.llm.merge_and_unload()
            self.merged = True
            self._lean = LeanQwen2.build(self._decoder())
        return self.eval()

    @property
    def device(self) -> torch.device:
        return self.queries.device

    def _check_not_merged(self, what: str) -> None:
        if self.merged:
            raise RuntimeError(
                f"this VLA was merged for inference and cannot be {what}; load the checkpoint again"
            )

    # ------------------------------------------------------------------ sequences
    def _prompt_ids(self, speed: float, instruction: str | None, mode: str) -> list[int]:
        text = driving_prompt(speed, instruction, mode)
        ids = self._prompt_cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(self._prompt_cache) < 4096:
                self._prompt_cache[text] = ids
        return ids

    def encode_answers(self, texts: Sequence[str]) -> list[list[int]]:
        """Answer token ids with </s> (truncated to `max_answer_tokens`)."""
        out = []
        for t in texts:
            ids = self.tokenizer(t, add_special_tokens=False)["input_ids"][
                : self.config.max_answer_tokens - 1
            ]
            out.append([*ids, self.ids[EOS]])
        return out

    def _pack(self, prefix: list[list[int]], answers: list[list[int]] | None, queries: bool) -> Packed:
        n_img = self.vision.num_tokens
        nq = self.config.path_points + self.config.speed_points
        q = [self.ids[PATH_QUERY]] * self.config.path_points + [
            self.ids[SPEED_QUERY]
        ] * self.config.speed_points
        rows, ans = [], []
        for i, p in enumerate(prefix):
            a = answers[i] if answers is not None else []
            rows.append([self.ids[BOS]] + [self.ids[IMAGE_TOKEN]] * n_img + p + a + (q if queries else []))
            ans.append(len(a))
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        answer = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, length - len(r) :] = torch.tensor(r)
            mask[i, length - len(r) :] = 1
            end = length - (nq if queries else 0)
            answer[i, end - ans[i] : end] = True
        dev = self.device
        return Packed(ids.to(dev), mask.to(dev), answer.to(dev))

    def _embeddings(self, ids: torch.Tensor, image_tokens: torch.Tensor | None,
                    target_points: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        emb = self._embed()(ids)
        if image_tokens is not None:
            m = ids == self.ids[IMAGE_TOKEN]
            emb = emb.masked_scatter(m[..., None], self.projector(image_tokens).to(emb.dtype))
        if target_points is not None:
            m = ids == self.ids[TARGET_POINT_TOKEN]
            tp = self.target_point_mlp(target_points.to(emb.dtype).reshape(-1, 2))
            emb = emb.masked_scatter(m[..., None], tp.to(emb.dtype))
        for tok, sl in ((PATH_QUERY, slice(0, self.config.path_points)),
                        (SPEED_QUERY, slice(self.config.path_points, None))):  # fmt: skip
            m = ids == self.ids[tok]
            if m.any():
                q = self.queries[sl].to(emb.dtype).expand(ids.shape[0], -1, -1)
                emb = emb.masked_scatter(m[..., None], q)
        return emb

    def _prefixes(self, batch: dict) -> list[list[int]]:
        speeds = batch["speed"].reshape(-1).tolist()
        n = len(speeds)
        instr = batch.get("instruction") or [None] * n
        modes = batch.get("mode") or ["safety"] * n
        return [self._prompt_ids(speeds[i], instr[i] or None, modes[i] or "safety") for i in range(n)]

    @staticmethod
    def _positions(mask: torch.Tensor) -> torch.Tensor:
        return (mask.cumsum(1) - 1).clamp_min(0)

    def _answer_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self._lm_head()(hidden).float()
        return logits.index_fill(-1, self.banned_ids, float("-inf"))

    def _decode_waypoints(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (B, 30, d) at the query positions -> cumulative path (B, 20, 2), speed wps (B, 10, 2)."""
        np_ = self.config.path_points
        path = self.path_head(hidden[:, :np_]).float().cumsum(1)
        speed = self.speed_head(hidden[:, np_:]).float().cumsum(1)
        return path, speed

    @property
    def history_ticks(self) -> int:
        """How many ticks back the second camera image lies (0: the VLA sees the current image alone)."""
        return self.config.vision.history_ticks

    # ------------------------------------------------------------------ training
    def forward_teacher(self, batch: dict, answers: list[list[int]]) -> dict[str, torch.Tensor]:
        """One forward with the given answers: per-token answer log-probs and the decoded waypoints."""
        image_tokens = self.vision(batch["image"].to(self.device), batch.get("previous_image"))
        packed = self._pack(self._prefixes(batch), answers, queries=True)
        emb = self._embeddings(packed.ids, image_tokens, batch["target_points"].to(self.device))
        hidden = self._decoder()(
            inputs_embeds=emb, attention_mask=packed.mask, position_ids=self._positions(packed.mask),
            use_cache=False,
        ).last_hidden_state  # fmt: skip
        nq = self.config.path_points + self.config.speed_points
        path, speed = self._decode_waypoints(hidden[:, -nq:])
        # the token at position j is predicted from the hidden state at j - 1
        pred_pos = packed.answer.roll(-1, dims=1)
        logits = self._answer_logits(hidden[pred_pos])
        targets = packed.ids[packed.answer]
        token_lp = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
        out = {"token_log_probs": token_lp, "answer_mask": packed.answer, "path": path,
               "speed_waypoints": speed}  # fmt: skip
        if self.bev_head is not None:
            out["bev_logits"] = self.bev_head(image_tokens).float()
        return out

    def training_loss(self, batch: dict, weights: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
        """Cross-entropy on the answer + smooth-L1 on path and speed waypoints (masked per sample) +
        smooth-L1 on the desired speed the controller reads from the speed waypoints + binary
        cross-entropy of the BEV head (`config.bev_head`) against the batch's "bev" occupancy, when both are
        there. `weights` scales the terms (`LOSS_TERMS`; "desired_speed" 0 by default, the others 1).

        Why the desired-speed term: the controller's speed is |wp[2] - wp[0]| / 0.5 s, so braking hinges
        on a few decimetres of the first three speed waypoints, errors that the smooth-L1 over all ten
        waypoints (quadratic below 1 m, dominated by the far ones) hardly penalises. It covers frames
        where the ego moves (`DESIRED_SPEED_MIN_EGO_SPEED`)."""
        unknown = sorted(set(weights or {}) - set(LOSS_TERMS))
        if unknown:
            raise ValueError(f"unknown loss weights {unknown}; known: {list(LOSS_TERMS)}")
        w = dict(LOSS_TERMS) | (weights or {})
        texts = batch["language"]
        answers = self.encode_answers(texts)
        out = self.forward_teacher(batch, answers)
        dev = out["path"].device
        n = len(texts)
        lengths = out["answer_mask"].sum(1)
        sample_of_token = torch.repeat_interleave(torch.arange(n, device=dev), lengths)
        nll = torch.zeros(n, device=dev).index_add(0, sample_of_token, -out["token_log_probs"])
        has_lang = torch.tensor([bool(t) for t in texts], device=dev)
        lang_w = batch.get("language_weight", torch.ones(n)).to(dev) * has_lang
        lm = masked_mean(nll / lengths.clamp_min(1), lang_w)
        aw = batch.get("action_weight", torch.ones(n)).to(dev).float()
        w_path = aw * batch["has_path"].to(dev)
        w_speed = aw * batch["has_speed_waypoints"].to(dev)
        path_l = masked_mean(smooth_l1_per_sample(out["path"], batch["path"].to(dev).float()), w_path)
        speed_target = batch["speed_waypoints"].to(dev).float()
        speed_l = masked_mean(smooth_l1_per_sample(out["speed_waypoints"], speed_target), w_speed)
        desired = F.smooth_l1_loss(
            desired_speed_of(out["speed_waypoints"]), desired_speed_of(speed_target), reduction="none"
        )
        moving = batch["speed"].to(dev).reshape(-1) >= DESIRED_SPEED_MIN_EGO_SPEED
        desired_l = masked_mean(desired, w_speed * moving)
        loss = w["language"] * lm + w["path"] * path_l + w["speed"] * speed_l + w["desired_speed"] * desired_l
        terms = {"language": lm.detach(), "path": path_l.detach(), "speed": speed_l.detach(),
                 "desired_speed": desired_l.detach(), "n_action": (w_path > 0).sum().detach()}  # fmt: skip
        if "bev_logits" in out and "bev" in batch:
            bev_l = F.binary_cross_entropy_with_logits(out["bev_logits"], batch["bev"].to(dev).float())
            loss = loss + w["bev"] * bev_l
            terms["bev"] = bev_l.detach()
        return {"loss": loss, **terms}

    def answer_log_probs(self, batch: dict, answers: list[list[int]]) -> torch.Tensor:
        """(N,) summed log-probabilities of the given answers (teacher forcing, with gradients)."""
        out = self.forward_teacher(batch, answers)
        lengths = out["answer_mask"].sum(1)
        idx = torch.repeat_interleave(torch.arange(len(answers), device=lengths.device), lengths)
        return torch.zeros(len(answers), device=lengths.device).index_add(0, idx, out["token_log_probs"])

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, batch: dict, temperature: float = 0.0, max_new_tokens: int | None = None,
                 generator: torch.Generator | None = None,
                 forced: list[list[int]] | None = None) -> dict[str, Any]:  # fmt: skip
        """Generate answers (greedy at temperature 0) with a KV cache, then decode the waypoints with
        the 30 queries appended to each finished answer. Returns answers, texts, per-answer log-probs
        (at temperature 1), path and speed_waypoints. `forced`: each answer's first tokens, given rather
        than generated (in the answers and texts, not in the log-probs)."""
        max_new = max_new_tokens or self.config.max_answer_tokens
        image_tokens = self.vision(batch["image"].to(self.device), batch.get("previous_image"))
        packed = self._pack(self._prefixes(batch), forced, queries=False)
        emb = self._embeddings(packed.ids, image_tokens, batch["target_points"].to(self.device))
        mask = packed.mask
        pos = self._positions(mask)
        n = emb.shape[0]
        nq = self.config.path_points + self.config.speed_points
        cache: Any = None
        if self._lean is not None and n == 1:  # one unpadded sequence: the lean forward (lean_decoder.py)
            cache = self._lean.new_cache(n, emb.shape[1] + max_new + nq)
        hidden, cache = self._decode(emb, mask, pos, cache)
        last_h = hidden[:, -1]
        next_pos = pos[:, -1] + 1
        alive = torch.ones(n, dtype=torch.bool, device=self.device)
        answers: list[list[int]] = [list(f) for f in forced] if forced else [[] for _ in range(n)]
        log_probs = torch.zeros(n, device=self.device)
        eos = self.ids[EOS]
        tail = torch.empty((n, 0), dtype=torch.long, device=self.device)  # the last token, not yet fed
        for step in range(max_new):
            logp = torch.log_softmax(self._answer_logits(last_h), -1)
            if temperature > 0:
                probs = torch.softmax(logp / temperature, -1)
                tok = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                tok = logp.argmax(-1)
            log_probs += torch.where(alive, logp.gather(1, tok[:, None])[:, 0], 0.0)
            for i in torch.nonzero(alive)[:, 0].tolist():
                answers[i].append(int(tok[i]))
            step_mask = alive.long()[:, None]
            mask = torch.cat([mask, step_mask], 1)
            alive = alive & (tok != eos)
            if not alive.any() or step == max_new - 1:
                tail = tok[:, None]  # fed in one forward with the queries: one decoder call less
                break
            hidden, cache = self._decode(self._embed()(tok[:, None]), mask, next_pos[:, None], cache)
            last_h = hidden[:, -1]
            next_pos = next_pos + step_mask[:, 0]
        q_ids = torch.tensor(
            [self.ids[PATH_QUERY]] * self.config.path_points
            + [self.ids[SPEED_QUERY]] * self.config.speed_points,
            device=self.device,
        ).expand(n, -1)
        ids = torch.cat([tail, q_ids], 1)
        mask = torch.cat([mask, torch.ones((n, nq), dtype=mask.dtype, device=self.device)], 1)
        # the tail token sits at next_pos (masked out where the answer had already ended)
        q_start = next_pos + mask[:, -nq - tail.shape[1] : -nq].sum(1)
        qpos = q_start[:, None] + torch.arange(nq, device=self.device)
        positions = torch.cat([next_pos[:, None].expand(n, tail.shape[1]), qpos], 1)
        hidden = self._decode(self._embeddings(ids, None, None), mask, positions, cache)[0][:, -nq:]
        path, speed = self._decode_waypoints(hidden)
        texts = [self.tokenizer.decode([t for t in a if t != eos], skip_special_tokens=True) for a in answers]
        return {
            "answers": answers,
            "texts": texts,
            "log_probs": log_probs,
            "path": path,
            "speed_waypoints": speed,
        }

    def _decode(
        self, emb: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any
    ) -> tuple[torch.Tensor, Any]:
        """One decoder call on new tokens -> (normalised hidden states, cache): the lean forward when
        generate() allocated its cache, transformers' otherwise."""
        if isinstance(cache, LeanCache):
            return self._lean(emb, cache), cache
        out = self._decoder()(
            inputs_embeds=emb, attention_mask=_or_none(mask), position_ids=pos,
            past_key_values=cache, use_cache=True,
        )  # fmt: skip
        return out.last_hidden_state, out.past_key_values

    def predict(self, batch: dict, commentary: bool = True, marginal_speed: bool = False) -> dict[str, Any]:
        """Greedy commentary and the waypoints it leads to (the driving agent's call). Without
        `commentary`, the answer is empty (</s> alone) and the waypoint queries follow the prompt in one
        forward: the driving-only mode of a VLA trained with `train.commentary_dropout`. With
        `marginal_speed`, the speed action is decided over all its phrasings (`speed_action_by_marginal`)."""
        if commentary:
            out = self.generate(batch)
            if marginal_speed:
                out = self.speed_action_by_marginal(batch, out)
            return {"language": out["texts"], "path": out["path"], "speed_waypoints": out["speed_waypoints"]}
        n = int(batch["speed"].numel())
        with torch.no_grad():
            out = self.forward_teacher(batch, [[self.ids[EOS]]] * n)
        return {"language": [""] * n, "path": out["path"], "speed_waypoints": out["speed_waypoints"]}

    @torch.no_grad()
    def speed_action_by_marginal(self, batch: dict, greedy: dict[str, Any]) -> dict[str, Any]:
        """Re-decide the speed action of greedy commentaries by its probability summed over its phrasings.

        A small model spreads one decision over the phrasings it was trained on; greedy decoding then picks
        the single likeliest phrasing, which favours "Maintain speed" (one of whose first words also starts
        "Maintain the reduced speed") over "Decelerate" / "Slow down" / "Reduce speed" even where the three
        together are likelier. After the greedy route sentence, every phrasing of every speed action
        (`policies.language.SPEED_PHRASES`) is scored; the action of the largest total wins, in its
        likeliest phrasing, and the rest of the commentary and the waypoints are generated after it.
        Commentaries not of the form "<route sentence>. <speed phrasing>..." (takeover and instruction
        answers) keep their greedy text."""
        from policies.language import SPEED_PHRASES, spoken_speed_action

        out = {k: (list(v) if isinstance(v, list) else v.clone()) for k, v in greedy.items()}
        phrasings = [(action, p) for action, ps in SPEED_PHRASES.items() for p in ps]
        for i, text in enumerate(greedy["texts"]):
            spoken = spoken_speed_action(text)
            if spoken is None:
                continue
            route = text.partition(". ")[0]
            one = {k: v[i : i + 1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
            for k in ("instruction", "mode"):
                if batch.get(k):
                    one[k] = batch[k][i : i + 1]
            candidates = [self.tokenizer(f"{route}. {p}", add_special_tokens=False)["input_ids"]
                          for _, p in phrasings]  # fmt: skip
            lp = self.answer_log_probs(_repeat_batch(one, len(candidates)), candidates)
            totals: dict[Any, torch.Tensor] = {}
            for (action, _), v in zip(phrasings, lp, strict=True):
                totals[action] = torch.logaddexp(totals[action], v) if action in totals else v
            best = max(totals, key=lambda a: float(totals[a]))
            if best == spoken:
                continue
            k = max((j for j, (a, _) in enumerate(phrasings) if a == best), key=lambda j: float(lp[j]))
            redo = self.generate(one, forced=[candidates[k]])
            for key in ("answers", "texts", "log_probs", "path", "speed_waypoints"):
                out[key][i] = redo[key][0]
        return out

    @contextlib.contextmanager
    def adapter(self, name: str | None) -> Iterator[None]:
        """Run with another LoRA adapter (None: the base model without adapters)."""
        self._check_not_merged("switched to another adapter")
        if name is None:
            with self.llm.disable_adapter():
                yield
            return
        previous = self.llm.active_adapter
        grads = {n: p.requires_grad for n, p in self.llm.named_parameters()}
        self.llm.set_adapter(name)
        try:
            yield
        finally:
            self.llm.set_adapter(previous)
            for n, p in self.llm.named_parameters():  # set_adapter marks the active adapter trainable
                p.requires_grad_(grads[n])

    def add_reference_adapter(self) -> None:
        """Freeze a copy of the current adapter as the GRPO / DPO reference policy."""
        self._check_not_merged("given a reference adapter")
        base = self.llm.get_base_model()
        if REFERENCE not in self.llm.peft_config:
            self.llm.add_adapter(REFERENCE, self.lora_config)
        for module in base.modules():
            if hasattr(module, "lora_A") and REFERENCE in module.lora_A:
                module.lora_A[REFERENCE].load_state_dict(module.lora_A["default"].state_dict())
                module.lora_B[REFERENCE].load_state_dict(module.lora_B["default"].state_dict())
        self.set_base_trainable(self.config.lora.train_base)

    def has_reference(self) -> bool:
        return REFERENCE in self.llm.peft_config

    @torch.no_grad()
    def sample(self, batch: dict, n: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> SampleResult:  # fmt: skip
        """G = `n` answers per observation at `temperature`, with their log-probs under the current and
        the reference adapter (the base model when no reference adapter was added) and their waypoints.
        Rows are grouped by observation: rows i*n .. i*n+n-1 belong to observation i."""
        rep = _repeat_batch(batch, n)
        out = self.generate(rep, temperature=temperature, generator=generator)
        with self.adapter(REFERENCE if self.has_reference() else None):
            ref = self.answer_log_probs(rep, out["answers"])
        cur = self.answer_log_probs(rep, out["answers"]) if temperature != 1.0 else out["log_probs"]
        return SampleResult(out["answers"], out["texts"], cur, ref, out["path"], out["speed_waypoints"])

    # ------------------------------------------------------------------ checkpoints
    def save(self, folder: str | Path, meta: dict | None = None) -> Path:
        from safetensors.torch import save_file

        self._check_not_merged("saved")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        keep_base = self.config.llm.path is None or self.config.lora.train_base
        state = {
            k: v.detach().contiguous().cpu()
            for k, v in self.state_dict().items()
            if "lora_" not in k and (keep_base or not k.startswith("llm."))
        }
        tmp = (folder / WEIGHTS_FILE).with_suffix(".tmp")
        save_file(_untied(state), str(tmp))
        tmp.replace(folder / WEIGHTS_FILE)
        self.llm.save_pretrained(str(folder / ADAPTERS_DIR))
        save_tokenizer(self.tokenizer, folder / "tokenizer")
        write_config(folder, self.architecture, self.config.to_dict(), meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> VLA:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(folder)
        doc = read_config(folder, expect=cls.architecture)
        config = VLAConfig.from_dict(doc["config"])
        model = cls(config, tokenizer=load_tokenizer(folder / "tokenizer"))
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{folder} has no {WEIGHTS_FILE}")
        state = load_file(str(weights))
        own = set(_untied({k: v for k, v in model.state_dict().items() if "lora_" not in k}))
        missing = sorted(k for k in own - set(state) if not k.startswith("llm.") or config.llm.path is None)
        unexpected = sorted(set(state) - own)
        if missing or unexpected:
            raise CheckpointError(
                f"{weights} does not match the VLA built from its config: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
        try:
            model.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"{weights}: {e}") from e
        adapters = folder / ADAPTERS_DIR
        default = adapters / "adapter_model.safetensors"
        if not default.is_file():
            raise CheckpointError(f"{folder} has no LoRA adapter ({default})")
        set_peft_model_state_dict(model.llm, load_file(str(default)), adapter_name="default")
        if (adapters / REFERENCE / "adapter_model.safetensors").is_file():
            model.llm.add_adapter(REFERENCE, model.lora_config)
            ref = load_file(str(adapters / REFERENCE / "adapter_model.safetensors"))
            set_peft_model_state_dict(model.llm, ref, adapter_name=REFERENCE)
            model.set_base_trainable(config.lora.train_base)
        return model.to(device)


def _pretrained_qwen2(path: str) -> nn.Module:
    """A Qwen2-architecture causal LM from a local folder; any other architecture is refused by name."""
    from transformers import AutoConfig, Qwen2ForCausalLM

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"llm.path {path!r} is not a folder with a pretrained model (no config.json)")
    model_type = getattr(AutoConfig.from_pretrained(str(folder), local_files_only=True), "model_type", "?")
    if model_type != "qwen2":
        raise CheckpointError(f"llm.path {path!r} holds a {model_type!r} model; the VLA needs a qwen2 one")
    return Qwen2ForCausalLM.from_pretrained(str(folder), local_files_only=True)


def _or_none(mask: torch.Tensor) -> torch.Tensor | None:
    """No attention mask when nothing is padded (transformers then skips building one)."""
    return None if bool(mask.all()) else mask


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor once: safetensors refuses tensors that share memory (tied embeddings), and loading
    fills the tied copy by itself."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, v in state.items():
        key = (v.data_ptr(), v.numel())
        if key not in seen:
            seen.add(key)
            out[k] = v
    return out


def _repeat_batch(batch: dict, n: int) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.repeat_interleave(n, dim=0)
        elif isinstance(v, list):
            out[k] = [x for x in v for _ in range(n)]
        else:
            out[k] = v
    return out
