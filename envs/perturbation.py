"""Noise injection for expert data (DART-style recovery data).

An expert that never errs records only the states of its own good driving. A policy that imitates it
drifts into states the data never shows (still fast with a lead close ahead because it braked late, off
the lane centre) and has no labels for getting out of them. `ControlPerturbation` makes the executed
control differ from the expert's for short windows while every recorded frame keeps the expert's plan
from the state it is in, so the data holds recoveries (Laskey et al. 2017, DART; ChauffeurNet's
perturbed trajectories):

- `late_brake`: when the expert starts braking (brake after a tick without) while moving, a window opens
  with probability `brake_onset_p`; for `late_brake_s` seconds the ego does not brake and keeps the
  throttle it had before the onset: the state of a driver who reacted late.
- `steer`: at `steer_rate` windows per second while moving, a steering offset of `steer_offset` (either
  sign) is added for `steer_s` seconds: the ego leaves the lane centre and the expert steers back.

Windows do not overlap and a new one waits `cooldown_s` after the last one ended. The draws come from
the generator given at construction, so a rerun with the same seed perturbs the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LATE_BRAKE = "late_brake"
STEER = "steer"


@dataclass
class PerturbationConfig:
    brake_onset_p: float = 0.35
    late_brake_s: tuple[float, float] = (0.6, 1.6)
    steer_rate: float = 0.04  # windows per second
    steer_offset: tuple[float, float] = (0.04, 0.12)  # |normalised steer| added
    steer_s: tuple[float, float] = (0.3, 0.7)
    min_speed: float = 2.0  # m/s: no window opens slower than this
    cooldown_s: float = 5.0
    recovery_s: float = 3.0  # after a window: frames still tagged as recovery

    def __post_init__(self) -> None:
        if not 0.0 <= self.brake_onset_p <= 1.0:
            raise ValueError(f"brake_onset_p must be in [0, 1], got {self.brake_onset_p}")
        if self.steer_rate < 0.0:
            raise ValueError(f"steer_rate must be >= 0, got {self.steer_rate}")
        for name in ("late_brake_s", "steer_offset", "steer_s"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi:
                raise ValueError(f"{name} must be a range 0 <= low <= high, got {(lo, hi)}")


@dataclass
class Window:
    kind: str
    start: int  # first tick
    end: int  # first tick after the window
    steer: float = 0.0  # offset of a steer window
    throttle: float = 0.0  # throttle held by a late_brake window


class ControlPerturbation:
    """Call `apply(tick, control, speed)` every tick with the expert's control (throttle, brake, steer);
    it returns the control to execute. `windows` lists the windows opened so far."""

    def __init__(self, config: PerturbationConfig, rng: np.random.Generator, tick_dt: float = 0.05) -> None:
        self.config, self.rng, self.dt = config, rng, tick_dt
        self.windows: list[Window] = []
        self._prev = np.zeros(3, np.float32)  # the expert's control at the previous tick

    def _ticks(self, seconds: tuple[float, float]) -> int:
        return max(round(self.rng.uniform(*seconds) / self.dt), 1)

    def _maybe_open(self, tick: int, control: np.ndarray, speed: float) -> None:
        c = self.config
        last = self.windows[-1] if self.windows else None
        if speed < c.min_speed or (last is not None and tick < last.end + round(c.cooldown_s / self.dt)):
            return
        if control[1] > 0.0 and self._prev[1] <= 0.0 and self.rng.random() < c.brake_onset_p:
            self.windows.append(Window(LATE_BRAKE, tick, tick + self._ticks(c.late_brake_s),
                                       throttle=float(self._prev[0])))
        elif self.rng.random() < c.steer_rate * self.dt:
            offset = self.rng.uniform(*c.steer_offset) * self.rng.choice((-1.0, 1.0))
            self.windows.append(Window(STEER, tick, tick + self._ticks(c.steer_s), steer=float(offset)))

    def active(self, tick: int) -> Window | None:
        w = self.windows[-1] if self.windows else None
        return w if w is not None and w.start <= tick < w.end else None

    def apply(self, tick: int, control: np.ndarray, speed: float) -> np.ndarray:
        control = np.asarray(control, np.float32)
        if self.active(tick) is None:
            self._maybe_open(tick, control, speed)
        self._prev = control.copy()
        w = self.active(tick)
        if w is None:
            return control
        out = control.copy()
        if w.kind == LATE_BRAKE:
            out[0], out[1] = w.throttle, 0.0
        else:
            out[2] = float(np.clip(out[2] + w.steer, -1.0, 1.0))
        return out

    def in_recovery(self, tick: int) -> bool:
        """Whether `tick` lies in a window or within `recovery_s` after one."""
        tail = round(self.config.recovery_s / self.dt)
        return any(w.start <= tick < w.end + tail for w in self.windows)

    def summary(self) -> dict[str, int]:
        out = {LATE_BRAKE: 0, STEER: 0, "ticks": 0}
        for w in self.windows:
            out[w.kind] += 1
            out["ticks"] += w.end - w.start
        return out
