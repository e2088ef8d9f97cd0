"""Records of driving data: one `Frame` per recorded tick and `TakeoverSegment`s of frames.

Both expert driving (pre-training data) and takeovers are stored as frames, so one on-disk format
(`envs.dataset`) serves both. A takeover segment holds frames t - T_pre .. t + T_take around a trigger
at tick t: the pre-takeover frames carry language labels but no action labels (`path` / `speed_waypoints`
are None), the takeover frames carry the expert's waypoints. Every frame has a scene snapshot with the
agents' recorded future boxes (2 s at 5 Hz) and the expert's future trajectory, which is what the
pseudo-simulator needs to rebuild the scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FUTURE_STEPS = 10  # future boxes / trajectory samples per frame
FUTURE_DT = 0.2  # seconds between them (5 Hz, 2 s)


@dataclass
class Frame:
    tick: int
    route_id: str
    town: str
    # Observation (what a policy sees)
    image: np.ndarray | None  # (H, W, 3) uint8 camera image, None when not rendered
    speed: float
    target_points: np.ndarray  # (2, 2) ego frame
    command: int  # RoadOption
    # Labels
    language: str = ""
    path: np.ndarray | None = None  # (20, 2) expert path, ego frame, 1 m apart; None = no action label
    speed_waypoints: np.ndarray | None = None  # (10, 2) expert positions every 0.25 s, ego frame
    target_speed: float = float("nan")  # expert's target speed, m/s
    # What was driven
    control: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))  # applied [thr, brk, steer]
    driver: str = "expert"  # "expert" | "policy"
    policy_path: np.ndarray | None = None  # (20, 2) the policy's own path, when it has one
    # Scene snapshot (world frame)
    ego: np.ndarray = field(default_factory=lambda: np.zeros(4))  # x, y, yaw, speed
    agent_ids: list[str] = field(default_factory=list)
    agent_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    agent_box: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))  # x, y, yaw, hl, hw
    agent_speed: np.ndarray = field(default_factory=lambda: np.zeros(0))
    agent_future: np.ndarray = field(default_factory=lambda: np.zeros((0, FUTURE_STEPS, 5)))  # NaN = gone
    expert_future: np.ndarray = field(default_factory=lambda: np.zeros((FUTURE_STEPS, 3)))  # x, y, yaw
    buckets: list[str] = field(default_factory=list)  # SimLingo-style bucket tags
    hazards: list[str] = field(default_factory=list)
    cause: str = ""  # cause object kind of the expert's largest speed reduction ("" = none)


@dataclass
class TakeoverSegment:
    segment_id: str
    trigger: str  # "follow" | "collision" | "restart" | a user trigger's name
    trigger_tick: int
    route_id: str
    town: str
    frames: list[Frame]
    pre_takeover: np.ndarray  # (F,) bool, True on the T_pre frames before the trigger
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.pre_takeover) != len(self.frames):
            raise ValueError(
                f"segment {self.segment_id}: pre_takeover mask has {len(self.pre_takeover)} entries "
                f"for {len(self.frames)} frames"
            )


# ------------------------------------------------------------------------------ building frames
def scene_frame(scene, obs, route_id: str, town: str, with_image: bool = True, **fields: object) -> Frame:
    """A Frame of the tick `scene` / `obs` show: the observation and the scene snapshot, futures NaN
    until `fill_futures`; `fields` sets labels, control, driver, ..."""
    ego, agents = scene.ego, scene.agents
    n = len(agents)
    image = obs.image if with_image else None
    return Frame(
        tick=int(scene.tick),
        route_id=str(route_id),
        town=town,
        image=None if image is None else np.asarray(image).copy(),
        speed=float(obs.speed),
        target_points=np.asarray(obs.target_points, np.float32).copy(),
        command=int(obs.command),
        ego=np.array([ego.x, ego.y, ego.yaw, ego.speed], np.float64),
        agent_ids=list(agents.ids),
        agent_kind=np.asarray(agents.kind, np.int8).copy(),
        agent_box=np.asarray(agents.box, np.float64).reshape(-1, 5).copy(),
        agent_speed=np.asarray(agents.speed, np.float64).copy(),
        agent_future=np.full((n, FUTURE_STEPS, 5), np.nan),
        expert_future=np.full((FUTURE_STEPS, 3), np.nan),
        **fields,
    )


@dataclass
class SceneSnapshot:
    """What later frames need of one tick: the ego pose and every agent's box by id."""

    ego: np.ndarray  # x, y, yaw, speed
    boxes: dict[str, np.ndarray]


def snapshot(scene) -> SceneSnapshot:
    e = scene.ego
    box = np.asarray(scene.agents.box, np.float64).reshape(-1, 5)
    boxes = {i: box[k].copy() for k, i in enumerate(scene.agents.ids)}
    return SceneSnapshot(np.array([e.x, e.y, e.yaw, e.speed]), boxes)


def future_ticks(tick: int, tick_dt: float = 0.05) -> np.ndarray:
    """The ticks of a frame's FUTURE_STEPS future samples (every FUTURE_DT seconds)."""
    every = max(round(FUTURE_DT / tick_dt), 1)
    return tick + every * np.arange(1, FUTURE_STEPS + 1)


def fill_agent_futures(frame: Frame, snapshots: dict[int, SceneSnapshot]) -> None:
    """`frame.agent_future` from the snapshots of its future ticks (NaN where an agent is gone or the
    episode ended)."""
    fut = np.full((len(frame.agent_ids), FUTURE_STEPS, 5), np.nan)
    for j, t in enumerate(future_ticks(frame.tick).tolist()):
        snap = snapshots.get(t)
        if snap is None:
            continue
        for k, aid in enumerate(frame.agent_ids):
            b = snap.boxes.get(aid)
            if b is not None:
                fut[k, j] = b
    frame.agent_future = fut


def driven_future(frame: Frame, snapshots: dict[int, SceneSnapshot]) -> np.ndarray:
    """The ego's recorded poses (x, y, yaw) at the frame's future ticks (NaN past the episode's end)."""
    out = np.full((FUTURE_STEPS, 3), np.nan)
    for j, t in enumerate(future_ticks(frame.tick).tolist()):
        snap = snapshots.get(t)
        if snap is not None:
            out[j] = snap.ego[:3]
    return out
