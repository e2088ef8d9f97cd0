"""Backend-independent data types: the privileged `Scene` and the policy's `Observation`.

Conventions (every module follows them):
- World frame = the SUMO network frame: x east, y north, metres. CARLA coordinates are mapped into it
  when routes are read (see `envs.routes`).
- Yaw in radians, counter-clockwise from +x. SUMO's angle (degrees clockwise from north) converts with
  `yaw_from_sumo_angle`.
- Boxes are `(x, y, yaw, half_length, half_width)` rows, centred on the box centre, as CARLA's
  bounding-box extents are half sizes.

Everything is NumPy arrays so that Numba kernels, the renderer and the recorder read them directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class AgentKind(IntEnum):
    VEHICLE = 0
    PEDESTRIAN = 1
    BICYCLE = 2
    STATIC = 3  # static props: debris, advertisement boards, containers (collisions count as layout)
    EMERGENCY = 4
    PARKED_VEHICLE = 5  # parked or crashed vehicles (collisions count as vehicle collisions, as in CARLA)
    CONE = 6  # traffic cones, warning triangles, construction barriers (collisions count as layout)


class LightState(IntEnum):
    RED = 0
    YELLOW = 1
    GREEN = 2
    OFF = 3


class RoadOption(IntEnum):
    """Navigation commands, numbered as CARLA's agents.navigation.local_planner.RoadOption."""

    VOID = -1
    LEFT = 1
    RIGHT = 2
    STRAIGHT = 3
    LANEFOLLOW = 4
    CHANGELANELEFT = 5
    CHANGELANERIGHT = 6


BOX_COLUMNS = ("x", "y", "yaw", "half_length", "half_width")


def yaw_from_sumo_angle(angle_deg: float | np.ndarray) -> float | np.ndarray:
    """SUMO angle (deg, clockwise from north) -> yaw (rad, counter-clockwise from east), in (-pi, pi]."""
    yaw = np.radians(90.0 - np.asarray(angle_deg, dtype=np.float64))
    return np.arctan2(np.sin(yaw), np.cos(yaw))


def sumo_angle_from_yaw(yaw: float) -> float:
    return (90.0 - math.degrees(yaw)) % 360.0


@dataclass
class EgoState:
    x: float
    y: float
    yaw: float
    speed: float  # m/s, along the heading
    accel: float = 0.0  # m/s^2, longitudinal
    yaw_rate: float = 0.0  # rad/s
    steer: float = 0.0  # last applied normalised steer in [-1, 1]
    half_length: float = 2.45
    half_width: float = 1.06
    height: float = 1.5

    def box(self) -> np.ndarray:
        return np.array([self.x, self.y, self.yaw, self.half_length, self.half_width])

    def copy(self) -> EgoState:
        return EgoState(**self.__dict__)


@dataclass
class Agents:
    """Every non-ego participant at one tick (vehicles, pedestrians, bicycles, static objects)."""

    ids: list[str] = field(default_factory=list)
    kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    box: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    height: np.ndarray = field(default_factory=lambda: np.zeros(0))
    velocity: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # world frame, m/s
    speed: np.ndarray = field(default_factory=lambda: np.zeros(0))
    accel: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # Optional per-agent colour hint for rendering (RGB uint8); zeros = renderer's default by kind.
    color: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8))

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def concat(parts: list[Agents]) -> Agents:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Agents()
        return Agents(
            ids=[i for p in parts for i in p.ids],
            kind=np.concatenate([p.kind for p in parts]),
            box=np.concatenate([p.box for p in parts]),
            height=np.concatenate([p.height for p in parts]),
            velocity=np.concatenate([p.velocity for p in parts]),
            speed=np.concatenate([p.speed for p in parts]),
            accel=np.concatenate([p.accel for p in parts]),
            color=np.concatenate([p.color for p in parts]),
        )

    def index(self, agent_id: str) -> int:
        return self.ids.index(agent_id)


@dataclass
class TrafficLights:
    """One row per controlled link (incoming lane -> junction-internal lane)."""

    tls_id: list[str] = field(default_factory=list)
    state: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))  # LightState
    position: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # where the head stands
    stop_line: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, 2)))  # segment endpoints
    from_lane: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # LaneGraph index
    via_lane: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # internal lane index

    def __len__(self) -> int:
        return len(self.tls_id)


@dataclass
class StopSigns:
    """One row per incoming lane that must stop before entering the junction."""

    position: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    stop_line: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, 2)))
    lane: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    def __len__(self) -> int:
        return len(self.lane)


@dataclass
class Route:
    """The ego's dense route: `points` every 1/`POINTS_PER_METER` m along lane centres."""

    POINTS_PER_METER = 10

    route_id: str
    points: np.ndarray  # (R, 2)
    yaw: np.ndarray  # (R,)
    command: np.ndarray  # (R,) int8 RoadOption in force at each point
    lane: np.ndarray  # (R,) int32 LaneGraph index under each point
    speed_limit: np.ndarray  # (R,) m/s
    cum_length: np.ndarray  # (R,) metres from the start
    # Sparse target points (start, every command change, end, at most 50 m apart), as the leaderboard gives.
    target_points: np.ndarray  # (T, 2)
    target_commands: np.ndarray  # (T,) int8
    town: str = ""

    @property
    def length(self) -> float:
        return float(self.cum_length[-1]) if len(self.cum_length) else 0.0


@dataclass
class Scene:
    """Privileged ground truth at one tick. `lanes` is the static `envs.maps.LaneGraph`."""

    tick: int
    time: float
    ego: EgoState
    agents: Agents
    lights: TrafficLights
    stop_signs: StopSigns
    route: Route
    lanes: object  # envs.maps.network.LaneGraph (typed loosely to keep this module import-light)
    route_index: int = 0  # index of the ego's progress on route.points

    @property
    def dt(self) -> float:
        return 0.05


@dataclass
class Observation:
    """What a policy may see. Never the Scene."""

    image: np.ndarray | None  # (H, W, 3) uint8 front camera, or None when rendering is off
    speed: float
    target_points: np.ndarray  # (2, 2) next two route target points in the ego frame (x fwd, y left)
    command: int  # RoadOption of the next target point
    bev: np.ndarray | None = None  # (H, W, 3) uint8 bird's-eye raster, optional
