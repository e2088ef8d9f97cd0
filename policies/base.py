"""One interface for every driving agent: learned policies, the planner and the privileged expert.

Collection, evaluation and training call `reset(route)` once per route and `act(obs, scene)` every
tick. A privileged agent (`privileged = True`) reads the `Scene`; the others get `scene=None` and must
work from the `Observation` alone. Agents are found by name in `AGENTS` or by import path
(`my_pkg.agents:MyAgent`), so new ones plug in without touching the project.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from envs.plugins import resolve
from envs.scene import Observation, Route, Scene


@dataclass
class Control:
    throttle: float = 0.0  # [0, 1]
    brake: float = 0.0  # [0, 1]
    steer: float = 0.0  # [-1, 1], positive = left (counter-clockwise)

    def as_array(self) -> np.ndarray:
        return np.array([self.throttle, self.brake, self.steer], dtype=np.float32)

    @staticmethod
    def from_array(a: np.ndarray) -> Control:
        return Control(float(a[0]), float(a[1]), float(a[2]))


@dataclass
class Cause:
    """The object behind the expert's largest speed reduction."""

    kind: str  # AgentKind name in lower case, or red_light / yellow_light / stop_sign / route_end
    id: str | None
    distance: float  # metres from the ego's front to it along the path


@dataclass
class ExpertState:
    """What a privileged planner knows about its decision at one tick (labels and takeover triggers
    read it)."""

    target_speed: float  # m/s the planner drives towards now (after every constraint)
    desired_speed: float  # m/s on a free road: speed limit x ratio, junction cap
    speed: float  # ego speed, m/s
    command: int  # RoadOption of the route ahead
    hazards: dict[str, bool] = field(default_factory=dict)  # e.g. vehicle, pedestrian, red_light, ...
    cause: Cause | None = None
    lane_change: str | None = None  # "left" / "right" while changing lanes (bypass, emergency vehicle)
    lane_change_cause: Cause | None = None  # what the lane change is for: the obstacle gone around, ...
    stuck: bool = False


@dataclass
class AgentOutput:
    control: Control
    language: str = ""
    path: np.ndarray | None = None  # (20, 2) ego-frame path points, 1 m apart
    speed_waypoints: np.ndarray | None = None  # (10, 2) ego-frame positions every 0.25 s
    info: dict = field(default_factory=dict)
    expert: ExpertState | None = None  # set by privileged planners


@runtime_checkable
class DrivingAgent(Protocol):
    name: str
    privileged: bool

    def reset(self, route: Route) -> None: ...

    def act(self, obs: Observation, scene: Scene | None) -> AgentOutput: ...


AGENTS: dict[str, Callable[..., DrivingAgent]] = {}


def register_agent(name: str) -> Callable[[Callable[..., DrivingAgent]], Callable[..., DrivingAgent]]:
    def deco(factory: Callable[..., DrivingAgent]) -> Callable[..., DrivingAgent]:
        AGENTS[name] = factory
        return factory

    return deco


def make_agent(name: str, **kwargs: object) -> DrivingAgent:
    """Build an agent by registered name, `checkpoint:PATH` (a learned policy's checkpoint folder) or
    `module:attribute` import path."""
    import policies.expert
    import policies.simple_agent  # noqa: F401  (registers the built-in agents)

    if name.startswith("checkpoint:"):
        from policies.learned_agent import make_checkpoint_agent

        return make_checkpoint_agent(name, **kwargs)

    return resolve(name, AGENTS, "agent")(**kwargs)
