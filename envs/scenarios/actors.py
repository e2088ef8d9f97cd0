"""Actors scenarios own: scripted agents (walkers, cyclists, props) and SUMO vehicle flows.

Scripted agents are moved by the scenario, not by SUMO: pedestrians that step onto the road where
SUMO's walkers keep to sidewalks, cones and warning triangles, a door opening. They join the Scene
through `Scenario.scripted_agents`. An `ActorFlow` inserts SUMO vehicles at a source at randomised
gaps, as scenario-runner's ActorFlow does; SUMO drives them to the end of their edges and removes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from envs.scene import AgentKind, Agents

# Default extents (half length, half width, height) by kind.
EXTENTS = {
    AgentKind.PEDESTRIAN: (0.3, 0.3, 1.8),
    AgentKind.BICYCLE: (0.9, 0.35, 1.7),
    AgentKind.CONE: (0.2, 0.2, 0.7),
    AgentKind.STATIC: (0.5, 0.5, 1.0),
    AgentKind.PARKED_VEHICLE: (2.4, 1.0, 1.5),
    AgentKind.VEHICLE: (2.4, 1.0, 1.5),
}


@dataclass
class _Actor:
    id: str
    kind: int
    x: float
    y: float
    yaw: float
    half_length: float
    half_width: float
    height: float
    color: tuple[int, int, int]
    speed: float = 0.0  # current speed along `heading`
    heading: float = 0.0
    remaining: float = 0.0  # metres left on the current move


class ScriptedActors:
    """A set of scripted agents; `move` starts a straight move, `advance` integrates one tick."""

    def __init__(self) -> None:
        self._actors: dict[str, _Actor] = {}

    def __len__(self) -> int:
        return len(self._actors)

    def __contains__(self, actor_id: str) -> bool:
        return actor_id in self._actors

    def add(
        self,
        actor_id: str,
        kind: int,
        x: float,
        y: float,
        yaw: float,
        extent: tuple[float, float, float] | None = None,
        color: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        hl, hw, h = extent or EXTENTS.get(AgentKind(kind), (0.5, 0.5, 1.0))
        self._actors[actor_id] = _Actor(actor_id, int(kind), float(x), float(y), float(yaw), hl, hw, h, color,
                                        heading=float(yaw))

    def remove(self, actor_id: str) -> None:
        self._actors.pop(actor_id, None)

    def position(self, actor_id: str) -> np.ndarray:
        a = self._actors[actor_id]
        return np.array([a.x, a.y])

    def move(self, actor_id: str, heading: float, speed: float, distance: float, face: bool = True) -> None:
        """Move `distance` metres along `heading` at `speed` m/s, then stand."""
        a = self._actors[actor_id]
        a.heading, a.speed, a.remaining = float(heading), float(speed), float(distance)
        if face:
            a.yaw = float(heading)

    def moving(self, actor_id: str) -> bool:
        a = self._actors.get(actor_id)
        return a is not None and a.remaining > 0 and a.speed > 0

    def set_extent(self, actor_id: str, half_length: float, half_width: float) -> None:
        a = self._actors[actor_id]
        a.half_length, a.half_width = half_length, half_width

    def place(self, actor_id: str, x: float, y: float, yaw: float | None = None) -> None:
        a = self._actors[actor_id]
        a.x, a.y = float(x), float(y)
        if yaw is not None:
            a.yaw = float(yaw)

    def advance(self, dt: float) -> None:
        for a in self._actors.values():
            if a.remaining <= 0 or a.speed <= 0:
                a.speed = 0.0 if a.remaining <= 0 else a.speed
                continue
            step = min(a.speed * dt, a.remaining)
            a.x += step * math.cos(a.heading)
            a.y += step * math.sin(a.heading)
            a.remaining -= step
            if a.remaining <= 1e-9:
                a.remaining, a.speed = 0.0, 0.0

    def agents(self) -> Agents:
        acts = list(self._actors.values())
        n = len(acts)
        if n == 0:
            return Agents()
        speed = np.array([a.speed if a.remaining > 0 else 0.0 for a in acts])
        heading = np.array([a.heading for a in acts])
        return Agents(
            ids=[a.id for a in acts],
            kind=np.array([a.kind for a in acts], np.int8),
            box=np.array([(a.x, a.y, a.yaw, a.half_length, a.half_width) for a in acts], np.float64),
            height=np.array([a.height for a in acts]),
            velocity=np.column_stack([speed * np.cos(heading), speed * np.sin(heading)]),
            speed=speed,
            accel=np.zeros(n),
            color=np.array([a.color for a in acts], np.uint8).reshape(n, 3),
        )


class ActorFlow:
    """SUMO vehicles entering at (edges[0], lane_index, source_pos) whenever the last one has moved on by a
    gap drawn from `gap_range` metres; they drive `edges` at up to `speed` m/s."""

    def __init__(self, backend, prefix: str, edges: list[str], lane_index: int, source_pos: float,
                 speed: float, gap_range: tuple[float, float], rng: np.random.Generator,
                 vclass: str = "passenger", kind: int | None = None, max_actors: int = 40) -> None:
        self.backend = backend
        self.prefix = prefix
        self.edges = edges
        self.lane_index = lane_index
        self.source_pos = source_pos
        self.speed = speed
        self.gap_range = gap_range
        self.rng = rng
        self.vclass = vclass
        self.kind = kind
        self.max_actors = max_actors
        self.spawned: list[str] = []
        self.active = False
        self._next_gap = 0.0

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def alive(self) -> list[str]:
        ids = set(self.backend.vehicle_ids())
        return [v for v in self.spawned if v in ids]

    def tick(self) -> None:
        if not self.active:
            return
        ls = self.backend.ls
        alive = self.alive()
        if len(alive) >= self.max_actors:
            return
        if self.spawned:
            last = self.spawned[-1]
            if last in alive:
                try:
                    road = ls.vehicle.getRoadID(last)
                    pos = ls.vehicle.getLanePosition(last)
                    moved = pos - self.source_pos if road == self.edges[0] else 1e9
                except Exception:
                    moved = 1e9
                if moved < self._next_gap:
                    return
            elif last in ls.simulation.getPendingVehicles():
                return
        vid = f"{self.prefix}_{len(self.spawned)}"
        self.backend.add_vehicle(vid, self.edges, self.lane_index, self.source_pos, speed=self.speed,
                                 vclass=self.vclass, kind=self.kind, max_speed=self.speed)
        self.spawned.append(vid)
        self._next_gap = float(self.rng.uniform(*self.gap_range))
