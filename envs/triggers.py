"""Takeover triggers: when the shadow expert takes control from the policy (TakeVLA / TakeAD).

`envs.takeover.TakeoverCollector` builds one `TickInfo` per tick while the policy drives and calls
`trigger.update(info) -> bool` on every trigger; the first one that returns True starts a takeover.
After the takeover the collector calls `reset()` on every trigger, so timers never span a takeover.

Each trigger keeps its thresholds in a config dataclass (`Trigger.config_cls`), built from a dict with
`from_dict` (unknown keys are an error). Triggers are found by registered name (`TRIGGERS`, see
`register_trigger`) or by import path `"my_pkg.triggers:MyTrigger"` (`make_trigger`), so users add their
own without touching the project. A user trigger only needs `name`, `reset()` and `update(info)`.

envs must not import policies: the policy's and the expert's outputs are read by duck typing
(`AgentOutput`-like objects with `.control.throttle/.brake/.steer` and, for privileged planners,
`.expert` with `target_speed`, `speed`, `hazards`, `cause`).

Built-in triggers
-----------------
`follow` (FollowTrigger): the expert decelerates and the policy does not respond within
    `response_time` (0.5 s). The expert decelerates on a tick when its `target_speed` is at least
    `decel_margin` below the ego speed or its brake is at least `expert_brake`, and (with
    `require_cause`) its `ExpertState.cause` names an object it slows for (so plain over-speeding does
    not count). The policy responds on a tick when its brake is at least `response_brake` or the ego has
    slowed by `response_speed_drop` since the expert started decelerating. Only at ego speeds of at least
    `min_speed`; the trigger fires once the expert has decelerated for `response_time` without a response.
`collision` (CollisionTrigger): the ego's box and an agent's box (both at constant velocity: the ego
    along its heading at its speed, agents with their world velocity) overlap at some time in
    [0, `horizon`] (1 s), sampled every `step` s, with the separating-axis test of `envs.geometry`.
    Boxes are grown by `margin` m. Agents whose centre is behind the ego's centre (ego frame x < 0) are
    ignored with `ignore_behind` (a car running into the ego from behind is not the policy's error).
`restart` (RestartTrigger): the ego is stuck. Stuck = for at least `stuck_time` s (3 s) without
    interruption, on every tick: the ego speed is below `stuck_speed` (0.1 m/s); the expert wants to go
    (its `target_speed` is at least `go_speed`, 0.5 m/s, and it does not hold the brake); nothing holds
    the ego: the expert's hazards flag no red light / stop sign and its cause is not a red or yellow
    light, a stop sign or an object closer than `hold_distance` (4 m); the expert is not itself stuck
    (`ExpertState.stuck`: it only wants to go because its own stuck rule makes it creep; with
    `count_expert_creep` such ticks count too); and at least `min_agents` agents are within
    `traffic_radius` m (dense traffic; 0 by default, so any stuck ego counts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from envs.geometry import pairwise_overlap
from envs.plugins import resolve


@dataclass
class TickInfo:
    """What a trigger sees at one tick while the policy drives (before the tick's control is applied)."""

    tick: int
    time: float
    dt: float
    scene: Any  # envs.scene.Scene
    observation: Any  # envs.scene.Observation
    policy: Any  # the policy's AgentOutput this tick
    expert: Any  # the expert's AgentOutput this tick (shadow mode)

    @property
    def expert_state(self) -> Any:
        return getattr(self.expert, "expert", None)


def config_from_dict(cls: type, d: dict | None) -> Any:
    """Build dataclass `cls` from a dict; unknown keys raise ValueError naming the known ones."""
    d = dict(d or {})
    known = {f.name for f in fields(cls)}
    bad = set(d) - known
    if bad:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(bad)}; known: {sorted(known)}")
    return cls(**d)


class Trigger:
    """Base class: a named detector with a config dataclass, `reset()` and `update(info) -> bool`."""

    name: ClassVar[str] = "trigger"
    config_cls: ClassVar[type | None] = None

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        cls = self.config_cls
        if cls is not None:
            if config is None or isinstance(config, dict):
                config = config_from_dict(cls, {**(config or {}), **overrides})
            elif overrides:
                config = config_from_dict(cls, {**config.__dict__, **overrides})
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget timers (called at episode start and when control returns to the policy)."""

    def update(self, info: TickInfo) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


TRIGGERS: dict[str, type] = {}


def register_trigger(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        TRIGGERS[name] = cls
        return cls

    return deco


def make_trigger(spec: str | Any, config: Any = None) -> Any:
    """A trigger from a registered name, an import path `module:Class`, or an instance (returned as is)."""
    if not isinstance(spec, str):
        return spec
    cls = resolve(spec, TRIGGERS, "trigger")
    trig = cls(config) if config is not None else cls()
    for attr in ("name", "reset", "update"):
        if not hasattr(trig, attr):
            raise TypeError(f"trigger {spec!r} has no {attr!r}")
    return trig


def _control(out: Any) -> tuple[float, float]:
    """(throttle, brake) of an AgentOutput-like object."""
    c = getattr(out, "control", None)
    if c is None:
        return 0.0, 0.0
    return float(getattr(c, "throttle", 0.0)), float(getattr(c, "brake", 0.0))


# ------------------------------------------------------------------------------------- follow
@dataclass
class FollowConfig:
    response_time: float = 0.5  # s the policy has to respond
    decel_margin: float = 1.0  # m/s: expert target speed this far below the ego speed = decelerating
    expert_brake: float = 0.2  # expert brake at least this = decelerating
    require_cause: bool = True  # only decelerations for an object (ExpertState.cause) count
    response_brake: float = 0.1  # policy brake at least this = a response
    response_speed_drop: float = 0.3  # m/s the ego slowed since the expert began decelerating = a response
    min_speed: float = 1.0  # m/s: below this the ego is not following anything


@register_trigger("follow")
class FollowTrigger(Trigger):
    name = "follow"
    config_cls = FollowConfig

    def reset(self) -> None:
        self._ticks = 0
        self._v_start = 0.0

    def expert_decelerates(self, info: TickInfo) -> bool:
        c: FollowConfig = self.config
        es = info.expert_state
        _, brake = _control(info.expert)
        v = float(info.scene.ego.speed)
        if es is None:
            return brake >= c.expert_brake
        if c.require_cause and getattr(es, "cause", None) is None:
            return False
        return float(es.target_speed) <= v - c.decel_margin or brake >= c.expert_brake

    def update(self, info: TickInfo) -> bool:
        c: FollowConfig = self.config
        v = float(info.scene.ego.speed)
        if v < c.min_speed or not self.expert_decelerates(info):
            self._ticks = 0
            return False
        if self._ticks == 0:
            self._v_start = v
        _, brake = _control(info.policy)
        if brake >= c.response_brake or v <= self._v_start - c.response_speed_drop:
            self._ticks = 0
            return False
        self._ticks += 1
        return self._ticks * info.dt >= c.response_time - 1e-9


# ---------------------------------------------------------------------------------- collision
@dataclass
class CollisionConfig:
    horizon: float = 1.0  # s of constant-velocity prediction
    step: float = 0.1  # s between predicted poses
    margin: float = 0.0  # m added to every half extent
    ignore_behind: bool = True  # agents whose centre is behind the ego's centre do not count
    kinds: list[int] | None = None  # AgentKind values that count (None = all)
    max_distance: float = 60.0  # m: agents farther away are skipped before the box test


def predict_collisions(
    ego_box: np.ndarray,
    ego_velocity: np.ndarray,
    boxes: np.ndarray,
    velocities: np.ndarray,
    horizon: float,
    step: float,
    margin: float = 0.0,
) -> np.ndarray:
    """Earliest time (s) each of the N agent boxes overlaps the ego box under constant velocity for both,
    within [0, horizon] sampled every `step` s; inf where they never do. Boxes are (x, y, yaw, hl, hw)."""
    n = len(boxes)
    out = np.full(n, np.inf)
    if n == 0:
        return out
    times = np.arange(0.0, horizon + 1e-9, step)
    t = np.repeat(times, n)
    ego = np.tile(np.asarray(ego_box, np.float64), (len(t), 1))
    ego[:, 0] += ego_velocity[0] * t
    ego[:, 1] += ego_velocity[1] * t
    ego[:, 3:] += margin
    ag = np.tile(np.asarray(boxes, np.float64), (len(times), 1))
    vel = np.tile(np.asarray(velocities, np.float64), (len(times), 1))
    ag[:, 0] += vel[:, 0] * t
    ag[:, 1] += vel[:, 1] * t
    ag[:, 3:] += margin
    hit = pairwise_overlap(np.ascontiguousarray(ego), np.ascontiguousarray(ag)).reshape(len(times), n)
    any_hit = hit.any(axis=0)
    out[any_hit] = times[np.argmax(hit[:, any_hit], axis=0)]
    return out


@register_trigger("collision")
class CollisionTrigger(Trigger):
    name = "collision"
    config_cls = CollisionConfig

    def reset(self) -> None:
        self.last_hit: tuple[str, float] | None = None  # (agent id, predicted time) of the last firing

    def update(self, info: TickInfo) -> bool:
        c: CollisionConfig = self.config
        scene = info.scene
        agents = scene.agents
        if not len(agents):
            return False
        ego = scene.ego
        box = np.asarray(agents.box, np.float64)
        dx, dy = box[:, 0] - ego.x, box[:, 1] - ego.y
        keep = dx * dx + dy * dy <= c.max_distance**2
        if c.ignore_behind:
            keep &= dx * math.cos(ego.yaw) + dy * math.sin(ego.yaw) >= 0.0
        if c.kinds is not None:
            keep &= np.isin(np.asarray(agents.kind), np.asarray(c.kinds))
        idx = np.flatnonzero(keep)
        if not len(idx):
            return False
        v_ego = np.array([ego.speed * math.cos(ego.yaw), ego.speed * math.sin(ego.yaw)])
        vel = np.asarray(agents.velocity, np.float64)[idx]
        t_hit = predict_collisions(ego.box(), v_ego, box[idx], vel, c.horizon, c.step, c.margin)
        k = int(np.argmin(t_hit))
        if not np.isfinite(t_hit[k]):
            return False
        self.last_hit = (agents.ids[int(idx[k])], float(t_hit[k]))
        return True


# ------------------------------------------------------------------------------------ restart
@dataclass
class RestartConfig:
    stuck_time: float = 3.0  # s the ego must have been stuck
    stuck_speed: float = 0.1  # m/s: slower = standing
    go_speed: float = 0.5  # m/s: the expert's target speed at least this = it wants to go
    hold_distance: float = 4.0  # m: a cause object this close holds the ego (a queue, a car in front)
    min_agents: int = 0  # agents within traffic_radius needed (dense traffic); 0 = any stuck ego
    count_expert_creep: bool = False  # True: an expert going only by its own stuck (creep) rule counts
    traffic_radius: float = 25.0


_HOLDING_CAUSES = ("red_light", "yellow_light", "stop_sign")
_HOLDING_HAZARDS = ("red_light", "stop_sign")


@register_trigger("restart")
class RestartTrigger(Trigger):
    name = "restart"
    config_cls = RestartConfig

    def reset(self) -> None:
        self._ticks = 0

    def held(self, info: TickInfo) -> bool:
        """True when something legitimately keeps the ego standing or the expert does not want to go."""
        c: RestartConfig = self.config
        es = info.expert_state
        _, brake = _control(info.expert)
        if es is None:
            return brake > 0.0
        if float(es.target_speed) < c.go_speed or brake >= 0.5:
            return True
        if getattr(es, "stuck", False) and not c.count_expert_creep:
            return True  # the expert is as stuck as the ego: it creeps, it does not know better
        hazards = getattr(es, "hazards", {}) or {}
        if any(hazards.get(h, False) for h in _HOLDING_HAZARDS):
            return True
        cause = getattr(es, "cause", None)
        if cause is not None:
            if cause.kind in _HOLDING_CAUSES:
                return True
            if cause.distance is not None and float(cause.distance) < c.hold_distance:
                return True
        return False

    def dense(self, info: TickInfo) -> bool:
        c: RestartConfig = self.config
        if c.min_agents <= 0:
            return True
        agents, ego = info.scene.agents, info.scene.ego
        if not len(agents):
            return False
        d = np.hypot(agents.box[:, 0] - ego.x, agents.box[:, 1] - ego.y)
        return int(np.count_nonzero(d <= c.traffic_radius)) >= c.min_agents

    def update(self, info: TickInfo) -> bool:
        c: RestartConfig = self.config
        if float(info.scene.ego.speed) >= c.stuck_speed or self.held(info) or not self.dense(info):
            self._ticks = 0
            return False
        self._ticks += 1
        return self._ticks * info.dt >= c.stuck_time - 1e-9
