"""Configuration of the SimLingo-style VLA, with named size presets.

- `tiny` (default): a few MB, trains on a CPU (tests, the demo, the CPU pre-training run): a small
  transformers ResNet as vision encoder (camera image at 96 x 192), a 2-layer Qwen2-architecture LLM
  built from a config, a tokenizer trained on the label vocabulary. With no pretrained weights LoRA has
  nothing to adapt, so `lora.train_base` is on: pre-training trains the LLM fully and post-training
  trains the adapters.
- `qwen2-0.5b`: SimLingo's sizes, an InternViT-300M-sized ViT and a Qwen2-0.5B-sized LLM with LoRA
  r 32 / alpha 64 on all linear layers. Built from the config (random weights) unless `llm.path` /
  `vision.path` name local folders with pretrained weights (and the LLM's tokenizer).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# the VLA's training loss terms and their default weights (VLA.training_loss)
LOSS_TERMS = {"language": 1.0, "path": 1.0, "speed": 1.0, "desired_speed": 0.0, "bev": 1.0}


class ConfigError(ValueError):
    pass


@dataclass
class VisionConfig:
    type: str = "resnet"  # "resnet" | "vit" (transformers models built from this config) | "pretrained"
    path: str | None = None  # local folder of a pretrained vision model (type "pretrained")
    trust_remote_code: bool = False  # run the model code shipped in that folder (InternViT's)
    image_size: tuple[int, int] = (128, 256)  # (H, W) the camera image is resized to
    # (top, left, height, width) in camera pixels: the part of the image the encoder sees, cut out before
    # the resize. Spends the encoder's pixels where small hazards are (around the horizon) instead of on
    # the sky and the image's outer edges; None: the whole image.
    crop: tuple[int, int, int, int] | None = None
    # (top, left, height, width) in camera pixels: a second view, a window around the horizon at the
    # camera's full resolution (or resized to `fovea_size`), encoded by the same encoder and pooled to
    # `fovea_grid` more tokens after the whole view's: the detail of small hazards without losing the wide
    # view (InternVL's tiles next to a thumbnail, at this scale). None: no second view.
    fovea: tuple[int, int, int, int] | None = None
    fovea_size: tuple[int, int] | None = None  # (H, W) the window is resized to; None: its own size
    fovea_grid: tuple[int, int] = (2, 4)
    token_grid: tuple[int, int] = (4, 8)  # image features are pooled to rows x cols tokens
    # > 0: the camera image this many seconds earlier is stacked with the current one as three more input
    # channels (early fusion), so that motion shows: a lead closing in, a pedestrian stepping out. One
    # frame cannot tell a stopped lead from a slow one. Encoders built from the config only (resnet, vit).
    history_s: float = 0.0
    # resnet
    embedding_size: int = 16
    hidden_sizes: tuple[int, ...] = (16, 32, 64, 128)
    depths: tuple[int, ...] = (1, 1, 1, 1)
    # vit
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    patch_size: int = 14

    def validate(self) -> None:
        for name in ("crop", "fovea"):
            _check_ints(name, getattr(self, name), "four integers (top, left, height, width)", (0, 0, 1, 1),
                        "top and left must be >= 0, height and width >= 1")  # fmt: skip
        for name in ("fovea_size", "fovea_grid"):
            _check_ints(name, getattr(self, name), "two integers (rows, cols)", (1, 1), "both must be >= 1")
        resized = self.fovea_size is not None and tuple(self.fovea_size) != tuple(self.image_size)
        if resized and self.type != "resnet":
            raise ConfigError(
                f"vision.fovea_size {tuple(self.fovea_size)}: a {self.type} encoder takes its image_size "
                f"{tuple(self.image_size)} only (leave fovea_size unset: the window is resized to it)"
            )
        if self.history_s < 0:
            raise ConfigError(f"vision.history_s must be >= 0 seconds, got {self.history_s}")
        if self.history_s > 0 and self.type == "pretrained":
            raise ConfigError(
                "vision.history_s stacks two camera images as six input channels, which a pretrained "
                "vision model does not take; use an encoder built from the config (resnet or vit)"
            )

    @property
    def history_ticks(self) -> int:
        """The history offset in simulation ticks (0: the current image alone)."""
        from envs.buckets import TICK_DT

        return max(round(self.history_s / TICK_DT), 1) if self.history_s > 0 else 0


def _check_ints(name: str, value: object, shape: str, minimums: tuple[int, ...], rule: str) -> None:
    """`value` is None or len(minimums) integers, each at least its minimum."""
    if value is None:
        return
    ints = isinstance(value, (tuple, list)) and len(value) == len(minimums)
    if not ints or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
        raise ConfigError(f"vision.{name} must be {shape}, got {value}")
    if any(c < lo for c, lo in zip(value, minimums, strict=True)):
        raise ConfigError(f"vision.{name} {tuple(value)}: {rule}")


@dataclass
class LLMConfig:
    path: str | None = None  # local folder of a pretrained Qwen2-architecture model (+ its tokenizer)
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    vocab_size: int = 0  # 0: the tokenizer's size


@dataclass
class LoraSettings:
    r: int = 32
    alpha: int = 64
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"
    train_base: bool = False  # also train the LLM's base weights (models without pretrained weights)


@dataclass
class VLAConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    path_points: int = 20  # path queries, 1 m apart
    speed_points: int = 10  # speed-waypoint queries, 0.25 s apart
    head_hidden: int = 256
    bev_head: bool = False  # auxiliary BEV occupancy head on the image features (training only; policies.bev)
    max_answer_tokens: int = 40
    dtype: str = "float32"  # "float32" | "bfloat16"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> VLAConfig:
        parts = {"vision": VisionConfig, "llm": LLMConfig, "lora": LoraSettings}
        known = {f.name for f in fields(VLAConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown VLA config keys: {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key in parts:
                cls = parts[key]
                names = {f.name for f in fields(cls)}
                bad = sorted(set(value) - names)
                if bad:
                    raise ConfigError(f"unknown VLA config keys under {key!r}: {', '.join(bad)}")
                value = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
                kwargs[key] = cls(**value)
            else:
                kwargs[key] = value
        cfg = VLAConfig(**kwargs)
        cfg.vision.validate()
        return cfg


def tiny_config() -> VLAConfig:
    """The camera image at 96 x 192 (half the encoder cost of 128 x 256; lights and pedestrians stay
    several pixels tall at the distances that matter)."""
    return VLAConfig(
        vision=VisionConfig(image_size=(96, 192)), lora=LoraSettings(r=8, alpha=16, train_base=True),
        head_hidden=128,
    )  # fmt: skip


def qwen2_05b_config(llm_path: str | None = None, vision_path: str | None = None) -> VLAConfig:
    """SimLingo's sizes: InternViT-300M-sized ViT (448 px, patch 14, pooled to 16 x 16 tokens) and
    Qwen2-0.5B (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocabulary 151,936)."""
    vision = VisionConfig(
        type="pretrained" if vision_path else "vit", path=vision_path, image_size=(448, 448),
        token_grid=(16, 16),
    )  # fmt: skip
    llm = LLMConfig(
        path=llm_path, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, vocab_size=151936,
    )  # fmt: skip
    return VLAConfig(vision=vision, llm=llm, lora=LoraSettings(r=32, alpha=64), head_hidden=1024)


PRESETS = {"tiny": tiny_config, "qwen2-0.5b": qwen2_05b_config}


def preset(name: str) -> VLAConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown VLA preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]()
