"""Exponential moving average of a model's trainable weights (Polyak averaging).

A short run with a noisy gradient ends on weights that jitter around where a longer run would settle; the
average over the last ~1 / (1 - decay) steps is closer to that point (timm's ModelEma, the EMA of
diffusion training). Only the trainable parameters are averaged (frozen ones do not change); buffers
such as batch-norm statistics are the trained model's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    def current_decay(self) -> float:
        """The decay of the next update: (1 + n) / (10 + n) at first, so that the first steps, far from
        anything worth keeping, are forgotten quickly."""
        n = self.updates + 1
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach(), 1.0 - d)
        self.updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model (to save or evaluate it); the trained ones back after."""
        trained = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(self.params, trained, strict=True):
                    p.copy_(t)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(
                f"weight average of {len(state['shadow'])} tensors for a model with {len(self.shadow)}"
            )
        with torch.no_grad():
            for s, v in zip(self.shadow, state["shadow"], strict=True):
                s.copy_(v)
        self.updates = int(state["updates"])
