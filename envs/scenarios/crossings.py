"""Emergency-brake scenarios with walkers and cyclists crossing the ego's path."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from envs.scenarios.base import Scenario, ScenarioError, register_scenario
from envs.scene import AgentKind, Agents, Scene


@register_scenario
class PedestrianCrossing(Scenario):
    """A group of pedestrians crosses the road ahead of the ego when it reaches the trigger point."""

    type_name = "PedestrianCrossing"
    defaults: ClassVar[dict[str, str]] = {"crossing_distance": "18", "walkers": "3"}

    def setup(self) -> None:
        n = int(self.float_param("walkers"))
        if n < 1:
            raise ScenarioError(f"route {self.ctx.route_id}: scenario {self.name} needs walkers >= 1")
        _, p, yaw = self.route_point(self.trigger_s + self.float_param("crossing_distance"))
        self._fwd = np.array([math.cos(yaw), math.sin(yaw)])
        left = np.array([-self._fwd[1], self._fwd[0]])
        rng = self.ctx.rng
        start_off = -5.5  # right kerb side, metres left of the ego lane centre
        self._pos = np.stack(
            [p + left * (start_off - 0.6 * k) + self._fwd * (1.2 * k - 1.2) for k in range(n)]
        )
        self._dir = np.tile(left, (n, 1))
        self._speed = rng.uniform(1.3, 2.0, size=n)
        self._end = 9.0 + 0.6 * np.arange(n)  # lateral offset (left) where each walker stops
        self._left = left
        self._origin = p
        self._walking = np.zeros(n, np.bool_)

    def on_trigger(self, scene: Scene) -> None:
        self._walking[:] = True

    def tick(self, scene: Scene) -> None:
        if not self._walking.any():
            return
        step = (self._speed * scene.dt)[:, None] * self._dir
        self._pos[self._walking] += step[self._walking]
        lateral = (self._pos - self._origin) @ self._left
        self._walking &= lateral < self._end

    def scripted_agents(self) -> Agents:
        n = len(self._pos)
        yaw = math.atan2(self._left[1], self._left[0])
        speed = np.where(self._walking, self._speed, 0.0)
        box = np.column_stack([self._pos, np.full(n, yaw), np.full(n, 0.3), np.full(n, 0.3)])
        return Agents(
            ids=[f"sc_walker_{self.name}_{k}" for k in range(n)],
            kind=np.full(n, AgentKind.PEDESTRIAN, np.int8),
            box=box,
            height=np.full(n, 1.8),
            velocity=speed[:, None] * self._dir,
            speed=speed,
            accel=np.zeros(n),
            color=np.zeros((n, 3), np.uint8),
        )
