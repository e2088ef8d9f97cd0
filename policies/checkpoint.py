"""Checkpoint folders shared by the learned policies.

A checkpoint is a folder:
- `config.json`: {"architecture": "vla" | "planner" | ..., "format": 1, "config": {...}, "meta": {...}}
- `model.safetensors`: the weights (for the VLA: everything except the LoRA adapters)
- `adapters/<name>/`: LoRA adapters saved with peft (VLA only; "default" and, for GRPO, "reference")
- `tokenizer.json` or the pretrained tokenizer's files (VLA only)

`load_policy(path)` reads the architecture and builds the right class; a class's own `load` refuses a
folder of another architecture by name. Training state (optimiser, schedule, step) lives in the learner's
run folder, not here, so a checkpoint is only what is needed to drive.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = 1

# architecture name -> "module:Class" with a classmethod `load(folder, **kwargs)`
ARCHITECTURES: dict[str, str] = {
    "vla": "policies.vla:VLA",
    "planner": "policies.planner:CompactPlanner",
}


class CheckpointError(ValueError):
    pass


def write_config(folder: str | Path, architecture: str, config: dict, meta: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"architecture": architecture, "format": FORMAT, "config": config, "meta": meta or {}}
    path = folder / CONFIG_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def read_config(folder: str | Path, expect: str | None = None) -> dict:
    """The checkpoint's config document; with `expect`, refuse another architecture by name."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint: it has no {CONFIG_FILE}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    arch = doc.get("architecture") if isinstance(doc, dict) else None
    if not isinstance(arch, str) or not isinstance(doc.get("config"), dict):
        raise CheckpointError(f"{path} names no architecture and config")
    if doc.get("format", FORMAT) > FORMAT:
        raise CheckpointError(f"{path} has format {doc['format']}; this version reads up to {FORMAT}")
    if expect is not None and arch != expect:
        raise CheckpointError(
            f"{folder} holds a {arch!r} checkpoint, not a {expect!r} one; load it with load_policy() "
            f"or the matching class"
        )
    return doc


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder, a training run's `latest` pointer file, or the run
    folder itself (its newest checkpoint)."""
    path = Path(path)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return path
    pointer = path if path.is_file() else path / "checkpoints" / "latest"
    if pointer.is_file():
        target = pointer.parent / pointer.read_text().strip()
        if not target.is_dir():
            raise CheckpointError(f"{pointer} points to {target.name}, which does not exist")
        return target
    return path  # read_config names what is missing


def load_policy(folder: str | Path, **kwargs: Any) -> Any:
    """Load any learned policy from its checkpoint folder (or a run's `latest`, see resolve_checkpoint)."""
    from envs.plugins import resolve

    folder = resolve_checkpoint(folder)
    arch = read_config(folder)["architecture"]
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{folder}: unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    cls: Callable[..., Any] = resolve(ARCHITECTURES[arch], {}, "architecture")
    return cls.load(folder, **kwargs)


def load_for_inference(folder: str | Path, expect: str | None = None) -> Any:
    """`load_policy`, ready to decide: LoRA folded into the weights (a VLA) and in eval mode. With
    `expect`, a checkpoint of another architecture is a CheckpointError that names both."""
    folder = resolve_checkpoint(folder)
    if expect is not None:
        read_config(folder, expect=expect)
    policy = load_policy(folder)
    if hasattr(policy, "merge_for_inference"):
        policy.merge_for_inference()
    return policy.eval()
