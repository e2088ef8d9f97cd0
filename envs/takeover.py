"""Takeover collection: run any policy with an expert in shadow mode and record `TakeoverSegment`s.

`TakeoverCollector(env, policy, expert, config, triggers)` drives one episode per `run_episode(options)`.
Every tick both the policy and the expert compute their outputs (`act(obs, scene)`; the policy gets the
Scene only when it is `privileged`). While the policy drives, the triggers (`envs.triggers`) are checked;
when one fires at tick t the expert's control is applied from tick t on for `t_take` ticks (t .. t +
t_take - 1), then control returns to the policy and every trigger is reset. Triggers are not checked
while the expert drives. When the takeover ends with the ego standing (speed below `hold_speed`: behind
a queue, at a red light, before an obstacle the expert waits at), the expert keeps control, unrecorded,
until the ego moves again, as a safety driver would: handing a standing car back to a policy that wants
to creep forward makes the same takeover fire again every t_take ticks, and on the VLA's own takeovers
such repeats were 44 % of the segments (332 of 753), most of them at a few standstills.

A segment holds the frames t - t_pre .. t + t_take - 1 (fewer pre frames when the episode is younger
than t_pre ticks; fewer takeover frames when it ends during the takeover, then `info["truncated"]`):
- pre-takeover frames (mask True, driver "policy"): language label only (`path`, `speed_waypoints` None,
  `target_speed` NaN); the label is the one of the expert's state at the trigger tick t, written knowing
  the trigger (TakeVLA: the T_pre frames learn what should have been said at t);
- takeover frames (driver "expert"): the expert's path, speed waypoints, target speed and the label of
  the frame's own expert state.
Every frame records the applied control, the policy's own path, the scene snapshot (ego x, y, yaw, speed;
agents' ids, kinds, boxes, speeds), the expert's hazards and cause, and:
- `agent_future` (N, 10, 5): each agent's box at t + 0.2 s .. t + 2.0 s, read from the ticks recorded
  later (NaN where the agent has left the scene or the episode ended). A segment is finalised (and
  streamed to `on_segment`) once 2 s past its last frame have been simulated, or at the episode's end.
- `expert_future` (10, 3): the expert's intended trajectory, i.e. its speed waypoints (0.25 s apart)
  interpolated to 0.2 s .. 2.0 s and converted to the world frame, yaw along the motion (the ego's yaw
  while standing). This exists on pre-takeover frames too (what the expert would have done). An expert
  without speed waypoints falls back to the ego's recorded future poses.

Language labels: `labeler(expert_state, trigger, is_pre, tick) -> str` when given (TakeVLA's enhanced
labels: `policies.language.LabelGenerator(seed).takeover_label`); for pre-takeover frames it gets the
expert's state and tick at the trigger. Without a labeler, or for an expert output without an
`ExpertState`, the expert output's own `language` is used (envs does not import policies).
Frames carry the camera image only when the env renders one (`config.record_images` can drop it).
`collector.log` lists (tick, driver) for every tick of the last episode.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.segments import (
    Frame,
    SceneSnapshot,
    TakeoverSegment,
    driven_future,
    fill_agent_futures,
    future_ticks,
    planned_future,
    scene_frame,
    snapshot,
)
from envs.triggers import TickInfo, config_from_dict, make_trigger

Labeler = Callable[[Any, str, bool, int], str]  # (expert state, trigger, is_pre, tick) -> label


@dataclass
class TakeoverConfig:
    t_pre: int = 20  # pre-takeover frames before the trigger tick
    t_take: int = 50  # ticks the expert drives after a trigger
    triggers: list[str] = field(default_factory=lambda: ["follow", "collision", "restart"])
    trigger_params: dict[str, dict] = field(default_factory=dict)  # trigger name -> config dict
    record_images: bool = True
    max_ticks: int | None = None  # stop the episode after this many ticks (None = the env decides)
    max_segments: int | None = None  # stop the episode after this many segments
    hold_speed: float = 0.5  # m/s: after t_take the expert keeps control while the ego is slower (0: never)

    @staticmethod
    def from_dict(d: dict | None) -> TakeoverConfig:
        return config_from_dict(TakeoverConfig, d)


@dataclass
class _Open:
    segment: TakeoverSegment
    expert_outputs: list[Any]  # per frame, for expert_future
    complete: bool = False  # all takeover frames added


class TakeoverCollector:
    def __init__(
        self,
        env: Any,
        policy: Any,
        expert: Any,
        config: TakeoverConfig | dict | None = None,
        triggers: Sequence[Any] | None = None,
        labeler: Labeler | None = None,
        on_segment: Callable[[TakeoverSegment], None] | None = None,
        on_tick: Callable[[str, int], None] | None = None,
    ) -> None:
        if config is None or isinstance(config, dict):
            config = TakeoverConfig.from_dict(config)
        if config.t_take < 1 or config.t_pre < 0:
            raise ValueError(f"t_take must be >= 1 and t_pre >= 0 (got {config.t_take}, {config.t_pre})")
        if config.hold_speed < 0:
            raise ValueError(f"hold_speed must be >= 0 m/s (got {config.hold_speed})")
        self.env = env
        self.policy = policy
        self.expert = expert
        self.config = config
        specs = list(triggers) if triggers is not None else list(config.triggers)
        self.triggers = [
            make_trigger(s, config.trigger_params.get(s) if isinstance(s, str) else None) for s in specs
        ]
        self.labeler = labeler
        self.on_segment = on_segment
        self.on_tick = on_tick  # (driver, segments so far) after every tick: progress display
        self.episodes = 0
        self.log: list[tuple[int, str]] = []  # (tick, driver) of every tick of the last episode

    # ---------------------------------------------------------------------------------- episode
    def run_episode(self, options: dict | None = None, seed: int | None = None) -> list[TakeoverSegment]:
        """Drive one episode (env.reset(seed, options)) and return its finalised takeover segments."""
        cfg = self.config
        env = self.env
        env.reset(seed=seed, options=options)
        route = env.route
        self.policy.reset(route)
        self.expert.reset(route)
        for trig in self.triggers:
            trig.reset()
        self.episodes += 1
        self.log = []
        town = getattr(route, "town", "") or ""
        horizon = int(future_ticks(0)[-1])  # ticks from a frame to its last future sample
        history: deque[tuple[Frame, Any]] = deque(maxlen=cfg.t_pre)  # policy frames before now
        snapshots: dict[int, SceneSnapshot] = {}
        open_segs: list[_Open] = []
        done: list[TakeoverSegment] = []
        take_left = 0
        holding = False  # the expert keeps control past t_take while the ego stands (hold_speed)
        current: _Open | None = None
        n_ticks = 0
        ended = False
        try:
            while True:
                scene = env.scene
                obs = env.observation()
                tick = int(scene.tick)
                snapshots[tick] = snapshot(scene)
                pol = self.policy.act(obs, scene if getattr(self.policy, "privileged", False) else None)
                exp = self.expert.act(obs, scene)
                if holding and scene.ego.speed >= cfg.hold_speed:
                    holding = False
                    for trig in self.triggers:
                        trig.reset()
                room = cfg.max_segments is None or len(done) + len(open_segs) < cfg.max_segments
                if take_left == 0 and not holding and room:
                    info = TickInfo(tick, float(scene.time), float(scene.dt), scene, obs, pol, exp)
                    fired = [t for t in self.triggers if t.update(info)]
                    if fired:
                        current = self._open_segment(fired, tick, exp, route, town, history)
                        open_segs.append(current)
                        history.clear()
                        take_left = cfg.t_take
                if take_left > 0 or holding:
                    out, driver = exp, "expert"
                else:
                    out, driver = pol, "policy"
                self.log.append((tick, driver))
                if take_left > 0 and current is not None:
                    frame = self._frame(scene, obs, pol, exp, out, driver, route, town)
                    self._label(frame, exp, current.segment.trigger, tick, is_pre=False)
                    current.segment.frames.append(frame)
                    current.expert_outputs.append(exp)
                    current.segment.pre_takeover = np.append(current.segment.pre_takeover, False)
                    take_left -= 1
                    if take_left == 0:
                        current.complete = True
                        current = None
                        holding = cfg.hold_speed > 0 and scene.ego.speed < cfg.hold_speed
                        for trig in self.triggers:
                            trig.reset()
                elif not holding:  # a hold is not recorded, nor is it the next segment's pre-takeover run
                    history.append((self._frame(scene, obs, pol, exp, out, driver, route, town), exp))
                _, _, terminated, truncated, _ = env.step(out.control.as_array())
                n_ticks += 1
                if self.on_tick is not None:
                    self.on_tick(driver, len(done) + len(open_segs))
                # Finalise segments whose last frame's future (2 s) has been simulated.
                now = int(env.scene.tick)
                snapshots[now] = snapshot(env.scene)
                for o in [o for o in open_segs if o.complete and now >= o.segment.frames[-1].tick + horizon]:
                    open_segs.remove(o)
                    done.append(self._finalise(o, snapshots, truncated=False))
                self._prune(snapshots, open_segs, history, now, horizon)
                if terminated or truncated:
                    ended = True
                    break
                if cfg.max_ticks is not None and n_ticks >= cfg.max_ticks:
                    break
                if cfg.max_segments is not None and len(done) >= cfg.max_segments and not open_segs:
                    break
        finally:
            for o in open_segs:
                done.append(self._finalise(o, snapshots, truncated=not o.complete, episode_ended=ended))
        return done

    # --------------------------------------------------------------------------------- segments
    def _open_segment(
        self, fired: list[Any], tick: int, exp_now: Any, route: Any, town: str,
        history: deque[tuple[Frame, Any]],
    ) -> _Open:
        trig = fired[0]
        name = str(getattr(trig, "name", type(trig).__name__))
        info: dict[str, Any] = {"fired": [str(getattr(t, "name", type(t).__name__)) for t in fired],
                                "episode": self.episodes, "t_pre": self.config.t_pre,
                                "t_take": self.config.t_take}
        hit = getattr(trig, "last_hit", None)
        if hit is not None:
            info["collision_with"], info["collision_in_s"] = hit
        frames, outs = [], []
        for frame, exp in history:
            self._label(frame, exp_now, name, tick, is_pre=True)
            frames.append(frame)
            outs.append(exp)
        info["pre_frames"] = len(frames)
        seg = TakeoverSegment(
            segment_id=f"{route.route_id}-e{self.episodes}-t{tick}-{name}",
            trigger=name,
            trigger_tick=tick,
            route_id=str(route.route_id),
            town=town,
            frames=frames,
            pre_takeover=np.ones(len(frames), bool),
            info=info,
        )
        return _Open(seg, outs)

    def _label(self, frame: Frame, exp: Any, trigger: str, tick: int, is_pre: bool) -> None:
        """Language (from `exp`, the expert output at `tick`) and, on takeover frames, action labels."""
        state = getattr(exp, "expert", None)
        if self.labeler is not None and state is not None:
            frame.language = str(self.labeler(state, trigger, is_pre, tick))
        else:
            frame.language = str(getattr(exp, "language", "") or "")
        if not is_pre:
            frame.path = None if exp.path is None else np.asarray(exp.path, np.float32).copy()
            sw = getattr(exp, "speed_waypoints", None)
            frame.speed_waypoints = None if sw is None else np.asarray(sw, np.float32).copy()
            es = getattr(exp, "expert", None)
            frame.target_speed = float(es.target_speed) if es is not None else float("nan")
        else:
            frame.path = frame.speed_waypoints = None
            frame.target_speed = float("nan")

    def _frame(
        self, scene: Any, obs: Any, pol: Any, exp: Any, out: Any, driver: str, route: Any, town: str
    ) -> Frame:
        es = getattr(exp, "expert", None)
        hazards = [k for k, v in (getattr(es, "hazards", {}) or {}).items() if v] if es is not None else []
        cause = getattr(es, "cause", None) if es is not None else None
        pp = getattr(pol, "path", None)
        return scene_frame(
            scene, obs, str(route.route_id), town, with_image=self.config.record_images,
            control=out.control.as_array().astype(np.float32),
            driver=driver,
            policy_path=None if pp is None else np.asarray(pp, np.float32).copy(),
            hazards=hazards,
            cause="" if cause is None else str(cause.kind),
        )

    def _prune(
        self,
        snapshots: dict[int, SceneSnapshot],
        open_segs: list[_Open],
        history: deque,
        now: int,
        horizon: int,
    ) -> None:
        oldest = now - horizon - len(history) - 1
        for o in open_segs:
            if o.segment.frames:
                oldest = min(oldest, o.segment.frames[0].tick)
        for t in [t for t in snapshots if t < oldest]:
            del snapshots[t]

    def _finalise(
        self, o: _Open, snapshots: dict[int, SceneSnapshot], truncated: bool, episode_ended: bool = False
    ) -> TakeoverSegment:
        seg = o.segment
        for frame, exp in zip(seg.frames, o.expert_outputs, strict=True):
            fill_agent_futures(frame, snapshots)
            planned = planned_future(frame, getattr(exp, "speed_waypoints", None))
            frame.expert_future = driven_future(frame, snapshots) if planned is None else planned
        seg.info["truncated"] = bool(truncated)
        seg.info["takeover_frames"] = int(np.count_nonzero(~seg.pre_takeover))
        if episode_ended:
            seg.info["episode_ended"] = True
        if self.on_segment is not None:
            self.on_segment(seg)
        return seg
