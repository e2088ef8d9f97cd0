"""The PDM-Lite-style privileged expert (`expert`): lane_follow's IDM planner plus forecasting, bypasses,
emergency-vehicle yielding and the stuck rule.

It composes `policies.simple_agent.LaneFollowAgent`, which already provides the dense-route tracking with
PDM-Lite's lateral PID, the target speed (0.72 x speed limit, junction cap, curve limit), the IDM toward
leading agents / red lights / stop signs / the route end with PDM-Lite's parameters, the path and speed
waypoints and the language. On top of it, every tick the expert

1. plans a lateral shift of the route (`Shift`): an obstacle bypass when parked cars, accidents,
   construction props or slow bicycles block the ego lane ahead (into the adjacent same-direction lane,
   else into the opposite lane once a clearance check finds no oncoming vehicle that could reach the
   bypass before the ego has left it), or a lane change to let an emergency vehicle approaching from
   behind pass. The shifted route (smooth ramps, speed limit capped at `bypass_speed` on the bypass) is
   handed to lane_follow in place of the real one, so its IDM and controller drive it. A bypass of
   moving cyclists lasts until the ego is past them (as far as the lanes allow the offset); an
   opposite-lane bypass not yet alongside its obstacle is given up when oncoming traffic appears;
2. forecasts the ego with the chosen control (PDM-Lite's kinematic bicycle, `envs.dynamics`) and every
   moving agent at constant velocity for `forecast_s` (2 s; 1.1 s while a shift is active) and brakes
   when an oriented ego box overlaps an agent box (agents starting behind the ego are ignored: they
   must yield);
3. holds for a gap: once a forecast collision has stopped it (below `hold_speed`),
   it stays stopped until the route ahead is clear for `gap_s` (4 s) of accelerating along the route
   against every moving agent that does not drive its way, so that it does not inch, tick by tick,
   into a stream of crossing or merging traffic. After `push_after_s` without such a gap it takes one
   that vehicles can leave it by braking at `yield_decel` (6 m/s^2) 0.3 s after it enters their path,
   as drivers nose into dense streams (and as scenario-runner's flow vehicles brake for a car in their
   path), and stays committed for `commit_s`: it brakes only for what others' emergency braking
   (`commit_decel`) would not avoid and its own braking would, and otherwise drives on rather than stop
   inside the conflict;
4. applies the stuck rule: after `stuck_s` at standstill with no red light / stop sign / route end as the
   cause, it creeps for `creep_s` at `creep_speed`, ignoring vehicle constraints (pedestrians still stop
   it).

Outputs are lane_follow's (control, path 20 x 1 m, speed waypoints 10 x 0.25 s, ego frame) with
`AgentOutput.expert` updated: cause (largest speed reduction, including a predicted collision), hazards
(plus "collision" and "bypass"), `lane_change` ("left" / "right" while shifted) and `stuck`; the
language is the commentary of that final state (`policies.language.commentary`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numba
import numpy as np

from envs.dynamics import rollout_controls
from envs.geometry import boxes_overlap, overlap_mask, overlaps_any, polyline_frenet
from envs.scene import AgentKind, Observation, Route, Scene
from policies.base import AgentOutput, Cause, Control, register_agent
from policies.language import commentary
from policies.simple_agent import _CAUSE_NAMES, LaneFollowAgent

PPM = Route.POINTS_PER_METER
DT = 0.05
BLOCKING = (int(AgentKind.PARKED_VEHICLE), int(AgentKind.STATIC), int(AgentKind.CONE))
MOVING = 0.3  # m/s: agents faster than this are forecast
HOLD_CAUSES = ("red_light", "yellow_light", "stop_sign", "route_end")
FOLLOW_SLACK = 8.0  # m a bypass of moving cyclists is extended beyond where it must end, per extension
GAP_DT = 0.1  # s, step of the gap check's ego trajectory
YIELD_REACTION_S = 0.3  # s before an agent the ego cuts in front of is assumed to brake
YIELD_DETECT_M, YIELD_DETECT_S = 5.0, 1.0  # it notices the ego this far ahead of it (m + s of travel)
YIELDING_KINDS = (int(AgentKind.VEHICLE),)  # agents assumed to brake for an ego that takes a gap
SAME_WAY = math.cos(math.radians(30.0))  # agents heading within 30 deg of the ego are its leaders (IDM)


@numba.njit(cache=True)
def _first_overlap(traj, hl, hw, boxes, vel, dt, decel, reaction):  # pragma: no cover - numba
    """Row of `boxes` first overlapped by the ego box (half sizes hl, hw) along `traj` (K, >=3: x, y, yaw,
    one row per `dt`), or -1. Agents move at constant velocity, except that an agent with `decel[i] > 0`
    brakes at that rate `reaction` s after the ego box first enters its path (its box stretched ahead by
    YIELD_DETECT_M + YIELD_DETECT_S of travel: how far a driver, or CARLA's BasicAgent, looks)."""
    n = boxes.shape[0]
    pos = boxes.copy()
    speed = np.sqrt(vel[:, 0] ** 2 + vel[:, 1] ** 2)
    u = speed.copy()
    seen = np.full(n, -1.0)
    ego_box = np.empty(5)
    ego_box[3], ego_box[4] = hl, hw
    probe = np.empty(5)
    for k in range(traj.shape[0]):
        t = (k + 1) * dt
        ego_box[0], ego_box[1], ego_box[2] = traj[k, 0], traj[k, 1], traj[k, 2]
        for i in range(n):
            if speed[i] <= 0.0:
                continue
            hx, hy = vel[i, 0] / speed[i], vel[i, 1] / speed[i]
            if decel[i] > 0.0:
                if seen[i] < 0.0:
                    reach = YIELD_DETECT_M + YIELD_DETECT_S * u[i]
                    probe[0] = pos[i, 0] + hx * 0.5 * reach
                    probe[1] = pos[i, 1] + hy * 0.5 * reach
                    probe[2] = math.atan2(hy, hx)
                    probe[3] = pos[i, 3] + 0.5 * reach
                    probe[4] = pos[i, 4] + 0.3
                    if boxes_overlap(ego_box, probe):
                        seen[i] = t
                if seen[i] >= 0.0 and t - seen[i] > reaction:
                    u[i] = max(u[i] - decel[i] * dt, 0.0)
            pos[i, 0] += hx * u[i] * dt
            pos[i, 1] += hy * u[i] * dt
        i = overlaps_any(ego_box, pos)
        if i >= 0:
            return i
    return -1


@dataclass
class Shift:
    """A lateral offset of the route: 0 before a, ramps to `offset` at b, holds to c, back to 0 at d."""

    a: float
    b: float
    c: float
    d: float
    offset: float  # metres, + = left
    reason: str  # "bypass" / "emergency"
    agent_id: str | None = None  # what it is for: the emergency vehicle, the first bypassed obstacle
    blockers: tuple[str, ...] = ()  # moving agents a bypass overtakes (its end follows them)
    opposite: bool = False  # through the opposite-direction lane


@register_agent("expert")
class ExpertAgent:
    """Privileged PDM-Lite-style planner (see the module docstring)."""

    name = "expert"
    privileged = True

    def __init__(
        self,
        forecast_s: float = 2.0,
        forecast_lane_change_s: float = 1.1,
        bypass_horizon: float = 30.0,
        bypass_speed: float = 25.0 / 3.6,
        slow_bicycle: float = 4.0,
        stuck_s: float = 30.0,
        creep_s: float = 4.0,
        creep_speed: float = 2.0,
        emergency_distance: float = 60.0,
        hold_speed: float = 4.0,
        gap_s: float = 4.0,
        gap_accel: float = 2.0,
        push_after_s: float = 3.0,
        yield_decel: float = 6.0,
        commit_s: float = 3.0,
        commit_decel: float = 7.0,
        **lane_follow: float,
    ) -> None:
        self.base = LaneFollowAgent(**lane_follow)
        self.forecast_steps = round(forecast_s / DT)
        self.forecast_lc_steps = round(forecast_lane_change_s / DT)
        self.bypass_horizon = bypass_horizon
        self.bypass_speed = bypass_speed
        self.slow_bicycle = slow_bicycle
        self.stuck_ticks = round(stuck_s / DT)
        self.creep_ticks = round(creep_s / DT)
        self.creep_speed = creep_speed
        self.emergency_distance = emergency_distance
        self.hold_speed = hold_speed
        self.gap_steps = round(gap_s / GAP_DT)
        self.gap_accel = gap_accel
        self.push_ticks = round(push_after_s / DT)
        self.yield_decel = yield_decel
        self.commit_ticks = round(commit_s / DT)
        self.commit_decel = commit_decel
        self._route: Route | None = None

    # ---------------------------------------------------------------------------------- setup
    def reset(self, route: Route) -> None:
        self._route = route
        self._plan = route
        self.base.reset(route)
        self.shift: Shift | None = None
        self._still = 0
        self._creep = 0
        self._hold = False
        self._held = 0  # ticks held so far
        self._commit = 0  # ticks left of a committed gap (vehicles assumed to yield)
        self._idx = -1
        self._pts = np.ascontiguousarray(np.asarray(route.points, np.float64))
        self._cum = np.ascontiguousarray(np.asarray(route.cum_length, np.float64))
        self._yaw = np.asarray(route.yaw, np.float64)
        self._lane = np.asarray(route.lane, np.int64)

    def _set_plan(self, shift: Shift | None) -> None:
        self.shift = shift
        r = self._route
        assert r is not None
        if shift is None:
            plan = r
        else:
            w = np.interp(self._cum, [shift.a, shift.b, shift.c, shift.d], [0.0, 1.0, 1.0, 0.0])
            w = w * w * (3.0 - 2.0 * w)  # smoothstep ramps
            normal = np.stack([-np.sin(self._yaw), np.cos(self._yaw)], axis=1)
            pts = self._pts + (shift.offset * w)[:, None] * normal
            d = np.gradient(pts, axis=0)
            yaw = np.arctan2(d[:, 1], d[:, 0])
            limit = np.asarray(r.speed_limit, np.float64)
            limit = np.where(w > 0.0, np.minimum(limit, self.bypass_speed / self.base.speed_factor), limit)
            plan = dataclasses.replace(r, points=pts, yaw=yaw, speed_limit=limit)
        cleared = getattr(self.base, "_cleared_stops", set())
        self.base.reset(plan)
        self.base._cleared_stops = cleared
        self._plan = plan

    # ---------------------------------------------------------------------------------- acting
    def act(self, obs: Observation, scene: Scene | None) -> AgentOutput:
        if scene is None:
            raise ValueError("expert is a privileged agent and needs the Scene")
        if self._route is not scene.route:
            self.reset(scene.route)
        if len(self._pts) < 2:
            return self.base.act(obs, scene)
        ego = scene.ego
        v = max(float(ego.speed), 0.0)
        idx, s_ego = self._progress(ego.x, ego.y)

        self._update_shift(scene, idx, s_ego, v)
        plan_scene = scene if self._plan is scene.route else dataclasses.replace(scene, route=self._plan)
        creeping = self._creep > 0
        if creeping:
            plan_scene = dataclasses.replace(plan_scene, agents=self._pedestrians_only(scene))
        out = self.base.act(obs, plan_scene)
        es = out.expert
        assert es is not None
        ctrl = out.control

        # Forecast: ego with this control, agents at constant velocity.
        steps = self.forecast_lc_steps if self.shift is not None else self.forecast_steps
        committed = self._commit > 0
        self._commit = max(self._commit - 1, 0)
        hit = self._forecast_collision(scene, ctrl, steps, yielding=committed)
        if hit is not None and committed and self._forecast_collision(
                scene, Control(0.0, 1.0, ctrl.steer), steps, yielding=True) is not None:
            hit = None  # stopping would not avoid it either: clear the conflict instead of stopping in it
        if hit is not None and v < self.hold_speed:
            if not self._hold:
                self._hold, self._held = True, 0
            self._commit = 0
        elif self._hold:
            assertive = self._held >= self.push_ticks
            hit = self._gap_conflict(scene, s_ego, v, yielding=assertive)
            if hit is None:
                self._hold = False
                self._commit = self.commit_ticks if assertive else 0
        self._held += int(self._hold)
        if hit is not None:
            k, dist = hit
            ctrl = Control(0.0, 1.0, ctrl.steer)
            es.target_speed = 0.0
            kind = _CAUSE_NAMES.get(int(scene.agents.kind[k]), "vehicle")
            es.cause = Cause(kind, scene.agents.ids[k], dist)
            out.info["cause"], out.info["cause_id"], out.info["cause_distance"] = kind, es.cause.id, dist
            es.hazards["stopping"] = True
        if creeping and self._blocked_ahead(scene, v):
            ctrl = Control(0.0, 1.0, ctrl.steer)
            es.target_speed = 0.0
        es.hazards["collision"] = hit is not None
        es.hazards["bypass"] = self.shift is not None and self.shift.reason == "bypass"

        # Stuck rule.
        cause = es.cause.kind if es.cause is not None else None
        if self._creep > 0:
            self._creep -= 1
        elif v < 0.1 and cause not in HOLD_CAUSES:
            self._still += 1
            if self._still >= self.stuck_ticks:
                self._creep, self._still = self.creep_ticks, 0
        else:
            self._still = 0
        es.stuck = self._creep > 0
        if self.shift is not None and self.shift.a - 5.0 <= s_ego <= self.shift.d:
            es.lane_change = "left" if self.shift.offset > 0 else "right"
            es.lane_change_cause = self._shift_cause(scene, self.shift)
        out.control = ctrl
        out.language = commentary(es)
        out.info["shift"] = None if self.shift is None else dataclasses.asdict(self.shift)
        out.info["stuck"] = es.stuck
        return out

    def _progress(self, x: float, y: float) -> tuple[int, float]:
        """Windowed nearest-segment progress on the real route (global search when lost)."""
        if self._idx >= 0:
            idx, s, lat = polyline_frenet(self._pts, self._cum, x, y, max(self._idx - 2 * PPM, 0), 40 * PPM)
            if abs(lat) < 10.0:
                self._idx = idx
                return idx, s
        idx, s, _ = polyline_frenet(self._pts, self._cum, x, y, 0, len(self._pts))
        self._idx = idx
        return idx, s

    # -------------------------------------------------------------------------------- forecast
    def _forecast_collision(
        self, scene: Scene, ctrl: Control, steps: int, yielding: bool = False
    ) -> tuple[int, float] | None:
        """(agent index, distance) of the first agent the ego would hit within `steps` ticks, or None.
        `yielding`: vehicles brake at `yield_decel` after a reaction time (committed to a gap)."""
        agents = scene.agents
        if not len(agents):
            return None
        ego = scene.ego
        box = agents.box
        speed = np.hypot(agents.velocity[:, 0], agents.velocity[:, 1])
        reach = max(ego.speed, 0.0) * steps * DT + 30.0 * steps * DT + 10.0
        dx, dy = box[:, 0] - ego.x, box[:, 1] - ego.y
        fwd = dx * math.cos(ego.yaw) + dy * math.sin(ego.yaw)
        sel = (speed > MOVING) & (dx * dx + dy * dy < reach * reach) & (fwd > -ego.half_length)
        cand = np.flatnonzero(sel)
        if not len(cand):
            return None
        state = np.array([[ego.x, ego.y, ego.yaw, max(ego.speed, 0.0)]])
        traj = rollout_controls(state, np.array([ctrl.throttle]), np.array([ctrl.brake]),
                                np.array([ctrl.steer]), steps)[0]
        if traj[-1, 3] < 0.05 and ego.speed < 0.05:
            return None  # standing still: whatever comes is not ours to avoid
        boxes = np.ascontiguousarray(box[cand], dtype=np.float64)
        vel = np.ascontiguousarray(agents.velocity[cand], dtype=np.float64)
        decel = self._yield_decel(agents.kind[cand], self.commit_decel if yielding else 0.0)
        r = _first_overlap(traj, ego.half_length + 0.3, ego.half_width + 0.1, boxes, vel, DT, decel,
                           YIELD_REACTION_S)
        if r < 0:
            return None
        j = int(cand[r])
        dist = float(math.hypot(box[j, 0] - ego.x, box[j, 1] - ego.y) - ego.half_length)
        return j, max(dist, 0.0)

    @staticmethod
    def _yield_decel(kinds: np.ndarray, decel: float) -> np.ndarray:
        """Deceleration agents of `kinds` are assumed to brake at for an ego cutting in (0: they do not)."""
        return np.where(np.isin(kinds, YIELDING_KINDS), decel, 0.0)

    def _accelerate_along(self, s_ego: float, v: float, cum: np.ndarray) -> np.ndarray:
        """Route positions every GAP_DT over the gap horizon of the ego accelerating at `gap_accel` up to
        lane_follow's speed profile (speed limit, junction cap, curves)."""
        prof = getattr(self.base, "_vprof", None)
        out = np.empty(self.gap_steps)
        s = s_ego
        for k in range(self.gap_steps):
            n = min(len(prof), len(cum)) if prof is not None else 0
            cap = float(np.interp(s, cum[:n], prof[:n])) if n else 1e9
            v = min(v + self.gap_accel * GAP_DT, max(cap, 1.0))
            s = min(s + v * GAP_DT, float(cum[-1]))
            out[k] = s
        return out

    def _gap_conflict(self, scene: Scene, s_ego: float, v: float, yielding: bool = False
                      ) -> tuple[int, float] | None:
        """(agent index, distance) of the first moving agent that the ego, accelerating along the planned
        route for `gap_s`, would meet (`yielding`: vehicles brake at `yield_decel` once it cuts in).
        Leaders (ahead, heading its way) are the IDM's and followers (right behind it) must yield; vehicles
        approaching from behind on another lane count, as the ego may be merging into their lane."""
        agents = scene.agents
        if not len(agents):
            return None
        ego = scene.ego
        vel = agents.velocity
        speed = np.hypot(vel[:, 0], vel[:, 1])
        c, s = math.cos(ego.yaw), math.sin(ego.yaw)
        dx, dy = agents.box[:, 0] - ego.x, agents.box[:, 1] - ego.y
        horizon = self.gap_steps * GAP_DT
        reach = max(v, 15.0) * horizon + 20.0 * horizon + 10.0
        fwd, lat = dx * c + dy * s, -dx * s + dy * c
        same_way = (vel[:, 0] * c + vel[:, 1] * s) > SAME_WAY * speed
        leader = same_way & (fwd > 0.0)
        follower = (fwd < 0.0) & (np.abs(lat) < ego.half_width + 1.0)  # behind in the ego's lane: yields
        sel = (speed > MOVING) & ~leader & ~follower & (dx * dx + dy * dy < reach * reach)
        cand = np.flatnonzero(sel)
        if not len(cand):
            return None
        plan = self._plan
        cum = np.asarray(plan.cum_length, np.float64)
        s_plan = self._accelerate_along(s_ego, v, cum)
        pts = np.asarray(plan.points, np.float64)
        yaw = np.unwrap(np.asarray(plan.yaw, np.float64))
        traj = np.empty((len(s_plan), 4))
        traj[:, 0] = np.interp(s_plan, cum, pts[:, 0])
        traj[:, 1] = np.interp(s_plan, cum, pts[:, 1])
        traj[:, 2] = np.interp(s_plan, cum, yaw)
        traj[:, 3] = 0.0
        boxes = np.ascontiguousarray(agents.box[cand], dtype=np.float64)
        decel = self._yield_decel(agents.kind[cand], self.yield_decel if yielding else 0.0)
        r = _first_overlap(traj, ego.half_length + 0.5, ego.half_width + 0.3, boxes,
                           np.ascontiguousarray(vel[cand], dtype=np.float64), GAP_DT, decel, YIELD_REACTION_S)
        if r < 0:
            return None
        j = int(cand[r])
        return j, max(float(math.hypot(dx[j], dy[j]) - ego.half_length), 0.0)

    @staticmethod
    def _blocked_ahead(scene: Scene, v: float) -> bool:
        """While creeping: is any agent within 1 m (+ 0.5 s of travel) in front of the ego box?"""
        ego = scene.ego
        if not len(scene.agents):
            return False
        reach = 1.0 + 0.5 * v
        c, s = math.cos(ego.yaw), math.sin(ego.yaw)
        probe = np.array([ego.x + c * 0.5 * reach, ego.y + s * 0.5 * reach, ego.yaw,
                          ego.half_length + 0.5 * reach, ego.half_width + 0.2])
        return bool(overlap_mask(probe, np.ascontiguousarray(scene.agents.box)).any())

    @staticmethod
    def _pedestrians_only(scene: Scene):
        ag = scene.agents
        keep = np.flatnonzero(ag.kind == int(AgentKind.PEDESTRIAN))
        return dataclasses.replace(
            ag, ids=[ag.ids[i] for i in keep], kind=ag.kind[keep], box=ag.box[keep], height=ag.height[keep],
            velocity=ag.velocity[keep], speed=ag.speed[keep], accel=ag.accel[keep], color=ag.color[keep])

    # ---------------------------------------------------------------------------------- shifts
    def _frenet(self, x: float, y: float, idx: int, back: float, ahead: float) -> tuple[int, float, float]:
        start = max(idx - int(back * PPM), 0)
        return polyline_frenet(self._pts, self._cum, x, y, start, int((back + ahead) * PPM))

    def _update_shift(self, scene: Scene, idx: int, s_ego: float, v: float) -> None:
        sh = self.shift
        if sh is not None:
            if s_ego > sh.d:
                self._set_plan(None)
            elif sh.reason == "emergency":
                self._update_emergency(scene, idx, s_ego, sh)
            elif (sh.opposite and s_ego < sh.b + 2.0
                  and not self._oncoming_clear(scene, idx, s_ego, v, sh.offset, sh.d)):
                self._abort_shift(s_ego, v, sh)
            elif sh.blockers:
                self._follow_blockers(scene, idx, s_ego, sh)
            return
        if self._plan_emergency(scene, idx, s_ego, v):
            return
        self._plan_bypass(scene, idx, s_ego, v)

    def _neighbour_offset(self, side: int, i0: int, i1: int, lanes: object) -> float | None:
        """Offset (m, + left) to the same-direction neighbour lane on `side` (+1 left / -1 right) over route
        indices [i0, i1), or None when some lane there has none (or is inside a junction)."""
        if lanes is None:
            return None
        nb_arr = lanes.left if side > 0 else lanes.right
        route_lanes = self._lane[i0:i1]
        if not len(route_lanes) or np.any(route_lanes < 0):
            return None
        nbs = nb_arr[route_lanes]
        if np.any(nbs < 0) or np.any(lanes.is_internal[route_lanes]) or not np.all(lanes.drivable[nbs]):
            return None
        w = 0.5 * (lanes.width[route_lanes] + lanes.width[nbs])
        return side * float(np.mean(w))

    def _opposite_offset(self, i0: int, i1: int, lanes: object) -> float | None:
        """Offset (m, left) to an opposite-direction lane on the left over route indices [i0, i1)."""
        if lanes is None:
            return None
        offs = []
        for i in range(i0, i1, 5 * PPM):
            ln = int(self._lane[i])
            if ln < 0 or lanes.is_internal[ln] or lanes.left[ln] >= 0:
                return None
            w = float(lanes.width[ln])
            yaw = float(self._yaw[i])
            px = self._pts[i, 0] - math.sin(yaw) * w
            py = self._pts[i, 1] + math.cos(yaw) * w
            near = lanes.nearest_lanes(px, py, radius=0.6 * w, yaw=yaw + math.pi)
            if not near:
                return None
            offs.append(0.5 * (w + float(lanes.width[near[0][0]])))
        return float(np.mean(offs)) if offs else None

    def _lane_agents(self, scene: Scene, idx: int, back: float, ahead: float):
        """Yield (agent index, s, lateral, along-route speed) of agents near the route window."""
        agents = scene.agents
        if not len(agents):
            return
        box = agents.box
        x, y = scene.ego.x, scene.ego.y
        r = max(back, ahead) + 10.0
        for a in np.flatnonzero((box[:, 0] - x) ** 2 + (box[:, 1] - y) ** 2 < r * r).tolist():
            j, s, lat = self._frenet(float(box[a, 0]), float(box[a, 1]), idx, back, ahead)
            if abs(lat) > 12.0:
                continue
            ry = float(self._yaw[j])
            vl = float(agents.velocity[a, 0] * math.cos(ry) + agents.velocity[a, 1] * math.sin(ry))
            yield a, s, lat, vl

    def _plan_bypass(self, scene: Scene, idx: int, s_ego: float, v: float) -> None:
        horizon = max(self.bypass_horizon, v * v / 4.0 + 15.0)
        agents = scene.agents
        lanes = scene.lanes
        if not len(agents) or lanes is None:
            return
        half_lane = 1.75
        blockers: list[tuple[float, float, float, int]] = []  # (s, half length along, speed along, agent)
        for a, s, lat, vl in self._lane_agents(scene, idx, 0.0, horizon + 30.0):
            kind = int(agents.kind[a])
            slow = min(self.slow_bicycle, 0.6 * max(v, 1.0))
            slow_bike = kind == int(AgentKind.BICYCLE) and 0.0 <= vl < slow
            if kind not in BLOCKING and not slow_bike:
                continue
            j = min(int(s * PPM), len(self._lane) - 1)
            ln = int(self._lane[j])
            if ln >= 0:
                half_lane = 0.5 * float(lanes.width[ln])
            if abs(lat) >= half_lane + float(agents.box[a, 4]) - 0.2 or s <= s_ego:
                continue
            blockers.append((s, float(agents.box[a, 3]), max(vl, 0.0), a))
        if not blockers:
            return
        blockers.sort()
        first = blockers[0]
        if first[0] - s_ego > horizon:
            return
        group = [first]
        for b in blockers[1:]:
            if b[0] - group[-1][0] < 20.0:
                group.append(b)
        last = group[-1]
        s_first = first[0] - first[1]
        ramp = float(np.clip(1.2 * v + 8.0, 10.0, 20.0))
        # A cyclist rides at the lane edge: half the offset clears it, so the ramp may end just past it.
        bikes_only = all(int(agents.kind[b[3]]) == int(AgentKind.BICYCLE) for b in group)
        b_s = s_first + 1.0 if bikes_only else s_first - 4.0
        a_s = max(b_s - ramp, s_ego + 1.0)
        if b_s - a_s < 6.0:
            return  # too close to swerve smoothly: lane_follow's IDM keeps it stopped behind, re-plan later
        c_s = last[0] + last[1] + 6.0
        moving = tuple(agents.ids[b[3]] for b in group if b[2] > MOVING)
        named = agents.ids[first[3]]  # the obstacle the language names
        if moving:  # they ride on while the ego passes: end the bypass where they will be by then
            v_blk = max(b[2] for b in group)
            t_pass = (c_s - s_ego) / max(self.bypass_speed - v_blk, 1.0)
            c_s += min(v_blk * t_pass, 80.0)
        d_s = c_s + ramp
        i0 = max(int(a_s * PPM), 0)
        i1 = min(int(d_s * PPM), len(self._pts) - 1)
        if i1 - i0 < 2:
            return
        for side in (1, -1):
            off = self._neighbour_offset(side, i0, i1, lanes)
            if off is not None and self._same_direction_clear(scene, idx, s_ego, v, off, d_s):
                self._set_plan(Shift(a_s, b_s, c_s, d_s, off, "bypass", named, moving))
                return
        off = self._opposite_offset(i0, i1, lanes)
        if off is not None and self._oncoming_clear(scene, idx, s_ego, v, off, d_s):
            self._set_plan(Shift(a_s, b_s, c_s, d_s, off, "bypass", named, moving, opposite=True))

    @staticmethod
    def _shift_cause(scene: Scene, sh: Shift) -> Cause | None:
        """The agent a shift is for (first bypassed obstacle, emergency vehicle) while it is in the scene."""
        agents = scene.agents
        if sh.agent_id is None or sh.agent_id not in agents.ids:
            return None
        k = agents.index(sh.agent_id)
        ego = scene.ego
        dist = max(math.hypot(agents.box[k, 0] - ego.x, agents.box[k, 1] - ego.y) - ego.half_length, 0.0)
        return Cause(_CAUSE_NAMES.get(int(agents.kind[k]), "vehicle"), sh.agent_id, float(dist))

    def _abort_shift(self, s_ego: float, v: float, sh: Shift) -> None:
        """Give up a bypass not yet alongside its obstacle (oncoming traffic): ramp back from where the
        ego is; lane_follow then keeps it behind the obstacle until a new bypass is clear."""
        if s_ego <= sh.a:
            self._set_plan(None)
            return
        w = float(np.clip((s_ego - sh.a) / max(sh.b - sh.a, 1e-6), 0.0, 1.0))
        now = sh.offset * w * w * (3.0 - 2.0 * w)
        ramp = float(np.clip(1.2 * v + 8.0, 10.0, 20.0))
        self._set_plan(Shift(s_ego - 1.0, s_ego - 0.5, s_ego - 0.5, s_ego + ramp, now, "bypass"))

    def _follow_blockers(self, scene: Scene, idx: int, s_ego: float, sh: Shift) -> None:
        """Keep a bypass of moving agents (cyclists) going until the ego is 6 m past those not yet behind
        it, as far as the lanes allow the same offset (never into a junction)."""
        agents = scene.agents
        hl = scene.ego.half_length
        need = sh.c
        for bid in sh.blockers:
            if bid in agents.ids:
                k = agents.index(bid)
                _, s, _ = self._frenet(float(agents.box[k, 0]), float(agents.box[k, 1]), idx, 20.0, 150.0)
                if s + float(agents.box[k, 3]) > s_ego - hl:
                    need = max(need, s + float(agents.box[k, 3]) + 6.0 + hl)
        if need <= sh.c + 1.0:
            return
        c = need + FOLLOW_SLACK  # extended in steps: each extension rebuilds lane_follow's plan
        d = c + sh.d - sh.c
        i0, i1 = int(sh.c * PPM), int(d * PPM)
        if i1 >= len(self._pts) - 1:
            return
        lanes = scene.lanes
        ok = (self._opposite_offset(i0, i1, lanes) if sh.opposite
              else self._neighbour_offset(1 if sh.offset > 0 else -1, i0, i1, lanes)) is not None
        if ok:
            self._set_plan(dataclasses.replace(sh, c=c, d=d))

    def _same_direction_clear(self, scene: Scene, idx: int, s_ego: float, v: float, off: float,
                              s_end: float) -> bool:
        hl = scene.ego.half_length
        for _a, s, lat, vl in self._lane_agents(scene, idx, 40.0, s_end - s_ego + 10.0):
            if abs(lat - off) > 2.0:
                continue
            if s < s_ego:  # behind: must not be about to reach us
                if s_ego - s - 2 * hl < 6.0 + 3.0 * max(vl - v, 0.0):
                    return False
            elif s < s_end + 5.0 and vl < v + 1.0:
                return False
        return True

    def _oncoming_clear(self, scene: Scene, idx: int, s_ego: float, v: float, off: float,
                        s_end: float) -> bool:
        t_pass = (s_end - s_ego) / max(min(v, self.bypass_speed), 3.0) + 2.0
        for _a, s, lat, vl in self._lane_agents(scene, idx, 5.0, s_end - s_ego + 150.0):
            if abs(lat - off) > 2.2 or s < s_ego - 5.0:
                continue
            if s - s_end < 15.0 + max(-vl, 0.0) * t_pass:
                return False
        return True

    def _plan_emergency(self, scene: Scene, idx: int, s_ego: float, v: float) -> bool:
        agents = scene.agents
        if not len(agents) or scene.lanes is None:
            return False
        for a in np.flatnonzero(agents.kind == int(AgentKind.EMERGENCY)).tolist():
            bx, by = float(agents.box[a, 0]), float(agents.box[a, 1])
            if (bx - scene.ego.x) ** 2 + (by - scene.ego.y) ** 2 > self.emergency_distance ** 2:
                continue
            _, s, lat, = self._frenet(bx, by, idx, self.emergency_distance + 5.0, 5.0)
            if s >= s_ego or abs(lat) > 1.5:
                continue
            ramp = float(np.clip(1.2 * v + 8.0, 12.0, 25.0))
            a_s, b_s = s_ego + 1.0, s_ego + 1.0 + ramp
            c_s = s_ego + 1.0 + ramp + 150.0
            d_s = c_s + ramp
            i0 = int(a_s * PPM)
            for end in (d_s, b_s + 40.0 + ramp):
                i1 = min(int(end * PPM), len(self._pts) - 1)
                if i1 - i0 < 2:
                    continue
                for side in (-1, 1):
                    off = self._neighbour_offset(side, i0, i1, scene.lanes)
                    if off is not None and self._same_direction_clear(scene, idx, s_ego, v, off, end):
                        c = min(c_s, end - ramp)
                        self._set_plan(Shift(a_s, b_s, c, c + ramp, off, "emergency", agents.ids[a]))
                        return True
        return False

    def _update_emergency(self, scene: Scene, idx: int, s_ego: float, sh: Shift) -> None:
        """Return to the route lane once the emergency vehicle is 15 m ahead (or gone)."""
        agents = scene.agents
        if sh.c <= s_ego + 1.0:
            return
        passed = sh.agent_id not in agents.ids
        if not passed:
            k = agents.index(sh.agent_id)
            _, s, _ = self._frenet(float(agents.box[k, 0]), float(agents.box[k, 1]), idx, 80.0, 200.0)
            passed = s > s_ego + 15.0
        if passed and s_ego > sh.b:
            ramp = sh.b - sh.a
            c = s_ego + 1.0
            self._set_plan(Shift(sh.a, sh.b, c, c + ramp, sh.offset, sh.reason, sh.agent_id))
