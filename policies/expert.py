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
   handed to lane_follow in place of the real one, so its IDM and controller drive it;
2. forecasts the ego with the chosen control (PDM-Lite's kinematic bicycle, `envs.dynamics`) and every
   moving agent at constant velocity for `forecast_s` (2 s; 1.1 s while a shift is active) and brakes
   when an oriented ego box overlaps an agent box (agents starting behind the ego are ignored: they
   must yield);
3. applies the stuck rule: after `stuck_s` at standstill with no red light / stop sign / route end as the
   cause, it creeps for `creep_s` at `creep_speed`, ignoring vehicle constraints (pedestrians still stop
   it).

Outputs are lane_follow's (control, language, path 20 x 1 m, speed waypoints 10 x 0.25 s, ego frame) with
`AgentOutput.expert` updated: cause (largest speed reduction, including a predicted collision), hazards
(plus "collision" and "bypass"), `lane_change` ("left" / "right" while shifted) and `stuck`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numba
import numpy as np

from envs.dynamics import rollout_controls
from envs.geometry import overlap_mask, overlaps_any, polyline_frenet
from envs.scene import AgentKind, Observation, Route, Scene
from policies.base import AgentOutput, Cause, Control, register_agent
from policies.simple_agent import _CAUSE_NAMES, LaneFollowAgent

PPM = Route.POINTS_PER_METER
DT = 0.05
BLOCKING = (int(AgentKind.PARKED_VEHICLE), int(AgentKind.STATIC), int(AgentKind.CONE))
MOVING = 0.3  # m/s: agents faster than this are forecast
HOLD_CAUSES = ("red_light", "yellow_light", "stop_sign", "route_end")


@numba.njit(cache=True)
def _first_overlap(traj, hl, hw, boxes, vel, dt):  # pragma: no cover - numba
    """Row of `boxes` (moving at `vel`) first overlapped by the ego box along `traj` (K, 4), or -1."""
    moved = boxes.copy()
    ego_box = np.empty(5)
    ego_box[3], ego_box[4] = hl, hw
    for k in range(traj.shape[0]):
        t = (k + 1) * dt
        for i in range(boxes.shape[0]):
            moved[i, 0] = boxes[i, 0] + vel[i, 0] * t
            moved[i, 1] = boxes[i, 1] + vel[i, 1] * t
        ego_box[0], ego_box[1], ego_box[2] = traj[k, 0], traj[k, 1], traj[k, 2]
        i = overlaps_any(ego_box, moved)
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
    agent_id: str | None = None


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
        self._route: Route | None = None

    # ---------------------------------------------------------------------------------- setup
    def reset(self, route: Route) -> None:
        self._route = route
        self._plan = route
        self.base.reset(route)
        self.shift: Shift | None = None
        self._still = 0
        self._creep = 0
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
        hit = self._forecast_collision(scene, ctrl, steps, pedestrians_only=creeping)
        if hit is not None:
            k, dist = hit
            ctrl = Control(0.0, 1.0, ctrl.steer)
            es.target_speed = 0.0
            kind = _CAUSE_NAMES.get(int(scene.agents.kind[k]), "vehicle")
            es.cause = Cause(kind, scene.agents.ids[k], dist)
            out.info["cause"], out.info["cause_id"], out.info["cause_distance"] = kind, es.cause.id, dist
            es.hazards["stopping"] = True
            out.language = f"{out.language.split('.')[0]}. Stop now to avoid the {kind.replace('_', ' ')}."
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
        out.control = ctrl
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
        self, scene: Scene, ctrl: Control, steps: int, pedestrians_only: bool
    ) -> tuple[int, float] | None:
        """(agent index, distance) of the first agent the ego would hit within `steps` ticks, or None."""
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
        if pedestrians_only:
            sel &= agents.kind == int(AgentKind.PEDESTRIAN)
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
        r = _first_overlap(traj, ego.half_length + 0.3, ego.half_width + 0.1, boxes, vel, DT)
        if r < 0:
            return None
        j = int(cand[r])
        dist = float(math.hypot(box[j, 0] - ego.x, box[j, 1] - ego.y) - ego.half_length)
        return j, max(dist, 0.0)

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
        blockers: list[tuple[float, float, float]] = []  # (s, half length along, lateral)
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
            blockers.append((s, float(agents.box[a, 3]), lat))
        if not blockers:
            return
        blockers.sort()
        first = blockers[0]
        if first[0] - s_ego > horizon:
            return
        last = first
        for b in blockers[1:]:
            if b[0] - last[0] < 20.0:
                last = b
        s_first = first[0] - first[1]
        s_last = last[0] + last[1]
        ramp = float(np.clip(1.2 * v + 8.0, 10.0, 20.0))
        b_s = s_first - 4.0
        a_s = max(b_s - ramp, s_ego + 1.0)
        if b_s - a_s < 6.0:
            return  # too close to swerve smoothly: lane_follow's IDM keeps it stopped behind, re-plan later
        c_s = s_last + 6.0
        d_s = c_s + ramp
        i0 = max(int(a_s * PPM), 0)
        i1 = min(int(d_s * PPM), len(self._pts) - 1)
        if i1 - i0 < 2:
            return
        for side in (1, -1):
            off = self._neighbour_offset(side, i0, i1, lanes)
            if off is not None and self._same_direction_clear(scene, idx, s_ego, v, off, d_s):
                self._set_plan(Shift(a_s, b_s, c_s, d_s, off, "bypass"))
                return
        off = self._opposite_offset(i0, i1, lanes)
        if off is not None and self._oncoming_clear(scene, idx, s_ego, v, off, d_s):
            self._set_plan(Shift(a_s, b_s, c_s, d_s, off, "bypass"))

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
