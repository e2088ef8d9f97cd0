"""Simple built-in agents: a privileged lane follower (`lane_follow`) and a fixed-throttle dummy (`constant`).

`lane_follow` is a deliberately simple baseline, not the PDM-Lite expert. Each tick it

1. finds its progress on `scene.route` by a windowed nearest-segment search (a global search on the
   first tick or when it is more than 8 m off the route) and steers with PDM-Lite's `LateralPID` on
   the dense route from that point;
2. sets a cruise speed profile along the route: 0.72 x the route's speed limit, capped at 64 km/h,
   at `junction_speed` (30 km/h) on junction-internal lanes (only known when `scene.lanes` is given),
   and by a lateral-acceleration limit (2.5 m/s^2) in curves; the profile ramps down before slow
   sections at `comfort_decel`;
3. collects the things ON its path ahead and applies an IDM gap rule to each (the smallest
   acceleration wins):
   - agents of any kind whose centre projects onto the route ahead with
     |lateral offset| < half lane width + the agent's half extent across the route, within
     max(40 m, v^2 / 8 + 15 m). Pedestrians on sidewalks are off the path and are ignored on purpose;
   - RED / YELLOW lights whose link (via lane, i.e. the junction-internal lane) is on the route ahead,
     stop line within max(30 m, v^2 / 8 + 10 m). A yellow light is passed when stopping would need
     more than 4 m/s^2. If the route's lanes never contain a via lane of a light on its incoming lane,
     the most restrictive state of that incoming lane's links is used;
   - stop signs on an incoming lane of the route: stop, wait 0.5 s at standstill within 3 m of the
     line, then go (each sign once);
   - the end of the route;
4. turns the IDM acceleration into throttle / brake (graded brake = -a / 4.952 m/s^2, holding brake
   at standstill) and rolls the same IDM forward 2.5 s to produce 10 speed waypoints 0.25 s apart;
5. reports its decision as an `ExpertState` (target and desired speed, the route action within 20 m,
   the cause of the largest slow-down) and speaks it as SimLingo-style commentary
   (`policies.language.commentary`, canonical phrasing).

`see_agents=false` (`--agent-arg see_agents=false`) drops the agents from step 3: a lane follower blind
to traffic that still keeps to lights, stop signs and the route's speed profile, the bottom reference.

IDM parameters (gap from the front bumper; a = 3 m/s^2, b = 3.5 m/s^2, delta = 4): agents s0 3 m,
T 0.5 s; lights s0 1.5 m, T 0.1 s; stop signs s0 1 m, T 0.1 s; route end s0 1 m, T 0 s.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numba
import numpy as np

from envs.geometry import polyline_frenet, to_ego_frame
from envs.scene import AgentKind, LightState, Observation, RoadOption, Route, Scene, StopSigns, TrafficLights
from policies.base import AgentOutput, Cause, Control, ExpertState, register_agent
from policies.controller import LateralPID, WindowPID
from policies.language import commentary

PPM = Route.POINTS_PER_METER
MAX_DECEL = 4.952  # m/s^2 at brake = 1 (kinematic bicycle model of PDM-Lite / SimLingo)
IDM_A = 3.0
IDM_B = 3.5
IDM_FLOOR = 9.0  # deceleration returned for a gap already closed
ROLLOUT_ACCEL = 2.5  # acceleration bound used when predicting speed waypoints
PAD_METRES = 30.0  # straight extension past the route end, so paths and lookaheads never run out

_Add = Callable[[float, float, float, float, int, 'str | None'], None]

# Constraint kinds beyond AgentKind (0..6).
RED_LIGHT, YELLOW_LIGHT, STOP_SIGN, ROUTE_END = 10, 11, 12, 13
_ANNOUNCED = [int(c) for c in (RoadOption.LEFT, RoadOption.RIGHT, RoadOption.STRAIGHT,
                                RoadOption.CHANGELANELEFT, RoadOption.CHANGELANERIGHT)]
_CAUSE_NAMES = {
    int(AgentKind.VEHICLE): "vehicle", int(AgentKind.PEDESTRIAN): "pedestrian",
    int(AgentKind.BICYCLE): "bicycle", int(AgentKind.STATIC): "static",
    int(AgentKind.EMERGENCY): "emergency", int(AgentKind.PARKED_VEHICLE): "parked_vehicle",
    int(AgentKind.CONE): "cone", RED_LIGHT: "red_light", YELLOW_LIGHT: "yellow_light",
    STOP_SIGN: "stop_sign", ROUTE_END: "route_end",
}


@numba.njit(cache=True)
def _idm(v, v0, gaps, vleads, s0s, heads, a_max, b):  # pragma: no cover - numba
    """IDM acceleration for speed v, desired speed v0 and constraints; returns (accel, limiting index)."""
    free = a_max * (1.0 - (v / v0) ** 4)
    acc, arg = free, -1
    sqab = 2.0 * math.sqrt(a_max * b)
    for c in range(gaps.shape[0]):
        s = gaps[c]
        if s <= 0.05:
            a_c = -IDM_FLOOR
        else:
            star = s0s[c] + max(0.0, v * heads[c] + v * (v - vleads[c]) / sqab)
            a_c = free - a_max * (star / s) ** 2
        if a_c < acc:
            acc, arg = a_c, c
    return acc, arg


@numba.njit(cache=True)
def _rollout(v, s_ego, cum, vprof, gaps, vleads, s0s, heads, a_max, b, dt, n_steps, every, look_t):
    """Distance travelled at every `every`-th step of an IDM rollout (constraints at constant speed).

    The desired speed is the slowest profile speed over the next `look_t` seconds of travel.
    """
    out = np.empty(n_steps // every)
    travel = 0.0
    g = np.empty_like(gaps)
    n = cum.shape[0]
    for k in range(n_steps):
        t = k * dt
        j0 = min(np.searchsorted(cum, s_ego + travel), n - 1)
        j1 = min(np.searchsorted(cum, s_ego + travel + v * look_t), n - 1)
        v0 = vprof[j0]
        for j in range(j0 + 1, j1 + 1):
            v0 = min(v0, vprof[j])
        v0 = max(v0, 1.0)
        for c in range(gaps.shape[0]):
            g[c] = gaps[c] + vleads[c] * t - travel
        acc, _ = _idm(v, v0, g, vleads, s0s, heads, a_max, b)
        acc = min(max(acc, -MAX_DECEL), ROLLOUT_ACCEL)
        v_new = max(v + acc * dt, 0.0)
        travel += 0.5 * (v + v_new) * dt
        v = v_new
        if (k + 1) % every == 0:
            out[(k + 1) // every - 1] = travel
    return out


@register_agent("lane_follow")
class LaneFollowAgent:
    """Privileged lane follower with IDM gaps to agents, lights, stop signs and the route end."""

    name = "lane_follow"
    privileged = True

    def __init__(
        self,
        speed_factor: float = 0.72,
        max_speed: float = 64.0 / 3.6,
        junction_speed: float = 30.0 / 3.6,
        max_lateral_accel: float = 2.5,
        comfort_decel: float = 1.5,
        horizon: float = 40.0,
        light_horizon: float = 30.0,
        default_lane_width: float = 3.5,
        stop_sign_wait: float = 0.5,
        see_agents: bool = True,
    ) -> None:
        if not isinstance(see_agents, bool):
            raise ValueError(f"lane_follow: see_agents must be true or false, got {see_agents!r}")
        self.see_agents = see_agents
        self.speed_factor = speed_factor
        self.max_speed = max_speed
        self.junction_speed = junction_speed
        self.max_lateral_accel = max_lateral_accel
        self.comfort_decel = comfort_decel
        self.horizon = horizon
        self.light_horizon = light_horizon
        self.default_lane_width = default_lane_width
        self.stop_sign_ticks = round(stop_sign_wait / 0.05)
        self.lateral = LateralPID()
        self.throttle_pid = WindowPID(kp=1.5, ki=1.0, kd=0.0, window=20)
        self._route: Route | None = None

    # ------------------------------------------------------------------------------------ setup
    def reset(self, route: Route) -> None:
        self._route = route
        self.lateral.reset()
        self.throttle_pid.reset()
        self._idx = -1
        self._cleared_stops: set[tuple] = set()
        self._stop_wait = 0
        self._lanes_ref: object = None
        n = len(route.points)
        self._n = n
        if n < 2:
            return
        pts = np.asarray(route.points, dtype=np.float64)
        cum = np.asarray(route.cum_length, dtype=np.float64)
        d = pts[-1] - pts[-2]
        end_yaw = math.atan2(d[1], d[0]) if np.any(d) else float(route.yaw[-1])
        ext = np.arange(1, int(PAD_METRES * PPM) + 1) / PPM
        self._pts = np.ascontiguousarray(np.concatenate(
            [pts, pts[-1] + ext[:, None] * np.array([math.cos(end_yaw), math.sin(end_yaw)])]))
        self._cum = np.ascontiguousarray(np.concatenate([cum, cum[-1] + ext]))
        self._yaw = np.concatenate([np.asarray(route.yaw, np.float64), np.full(len(ext), end_yaw)])
        self._lane = np.concatenate([np.asarray(route.lane, np.int64), np.full(len(ext), -1)])
        cmd = np.asarray(route.command, np.int64)
        self._cmd = np.concatenate([cmd, np.full(len(ext), cmd[-1])])
        limit = np.asarray(route.speed_limit, np.float64)
        limit = np.where(np.isfinite(limit) & (limit > 0.1), limit, 50.0 / 3.6)
        self._limit = np.concatenate([limit, np.full(len(ext), limit[-1])])
        self._length = float(cum[-1])
        # Run-length segments of route lanes (route part only).
        lane = self._lane[:n]
        starts = np.concatenate([[0], np.flatnonzero(np.diff(lane) != 0) + 1])
        self._seg_start = starts
        self._seg_end = np.concatenate([starts[1:], [n]])
        self._seg_lane = lane[starts]
        self._lane_segments: dict[int, list[int]] = {}
        for k, ln in enumerate(self._seg_lane.tolist()):
            self._lane_segments.setdefault(int(ln), []).append(k)
        self._route_lanes = np.unique(lane)
        self._build_profile(None)

    def _build_profile(self, lanes: object) -> None:
        n_all = len(self._pts)
        yaw_u = np.unwrap(self._yaw)
        i = np.arange(n_all)
        lo, hi = np.clip(i - PPM, 0, n_all - 1), np.clip(i + PPM, 0, n_all - 1)
        ds = np.maximum(self._cum[hi] - self._cum[lo], 0.1)
        curv = np.abs(yaw_u[hi] - yaw_u[lo]) / ds
        cap = np.minimum(self.speed_factor * self._limit, self.max_speed)
        cap = np.minimum(cap, np.sqrt(self.max_lateral_accel / np.maximum(curv, 1e-6)))
        halfw = np.full(n_all, 0.5 * self.default_lane_width)
        valid = self._lane >= 0
        if lanes is not None:
            n_lanes = len(getattr(lanes, "width", ()))
            valid &= self._lane < n_lanes
            li = self._lane[valid]
            internal = getattr(lanes, "is_internal", None)
            if internal is not None:
                junction = np.zeros(n_all, bool)
                junction[valid] = np.asarray(internal)[li]
                cap = np.where(junction, np.minimum(cap, self.junction_speed), cap)
            width = getattr(lanes, "width", None)
            if width is not None:
                halfw[valid] = 0.5 * np.asarray(width, np.float64)[li]
        q = cap * cap + 2.0 * self.comfort_decel * self._cum
        q = np.minimum.accumulate(q[::-1])[::-1]
        self._vprof = np.ascontiguousarray(np.sqrt(np.maximum(q - 2.0 * self.comfort_decel * self._cum, 0.0)))
        self._halfw = halfw
        self._lanes_ref = lanes

    # ------------------------------------------------------------------------------------ acting
    def _progress(self, x: float, y: float) -> tuple[int, float]:
        if self._idx >= 0:
            start = max(self._idx - 2 * PPM, 0)
            idx, s, lat = polyline_frenet(self._pts, self._cum, x, y, start, 40 * PPM)
            if abs(lat) < 8.0:
                return idx, s
        idx, s, _ = polyline_frenet(self._pts, self._cum, x, y, 0, len(self._pts))
        return idx, s

    def _window_lanes(self, i0: int, i1: int) -> np.ndarray:
        a = int(np.searchsorted(self._seg_end, i0, side="right"))
        b = int(np.searchsorted(self._seg_start, i1, side="left"))
        return self._seg_lane[a:b]

    def _segment_from(self, lane: int, i0: int) -> int:
        """Index of the first route segment of `lane` that ends after i0, or -1."""
        for k in self._lane_segments.get(lane, ()):
            if self._seg_end[k] > i0:
                return k
        return -1

    def _line_s(self, stop_line: np.ndarray, fallback_idx: int) -> float:
        mid = 0.5 * (stop_line[0] + stop_line[1])
        start = max(fallback_idx - 15 * PPM, 0)
        _, s, lat = polyline_frenet(self._pts, self._cum, float(mid[0]), float(mid[1]), start, 20 * PPM)
        if abs(lat) > 4.0:
            return float(self._cum[min(fallback_idx, len(self._cum) - 1)])
        return s

    def act(self, obs: Observation, scene: Scene | None) -> AgentOutput:
        if scene is None:
            raise ValueError("lane_follow is a privileged agent and needs the Scene")
        if self._route is not scene.route:
            self.reset(scene.route)
        if self._n < 2:
            return AgentOutput(Control(0.0, 1.0, 0.0), "Remain stopped because there is no route.")
        if scene.lanes is not None and scene.lanes is not self._lanes_ref:
            self._build_profile(scene.lanes)
        ego = scene.ego
        x, y, yaw, hl = ego.x, ego.y, ego.yaw, ego.half_length
        v = max(float(ego.speed), 0.0)
        idx, s_ego = self._progress(x, y)
        self._idx = idx

        # Steering: PDM-Lite's lateral PID on the dense route from the progress point.
        path = self._pts[idx: idx + self.lateral.lookahead_points(v) + 1]
        steer = self.lateral.step(path, v, (x, y), yaw)

        # Constraints on the path ahead.
        horizon = max(self.horizon, v * v / 8.0 + 15.0)
        light_horizon = max(self.light_horizon, v * v / 8.0 + 10.0)
        gaps: list[float] = []
        vleads: list[float] = []
        s0s: list[float] = []
        heads: list[float] = []
        kinds: list[int] = []
        ids: list[str | None] = []

        def add(gap: float, vl: float, s0: float, head: float, kind: int, ident: str | None) -> None:
            gaps.append(gap)
            vleads.append(vl)
            s0s.append(s0)
            heads.append(head)
            kinds.append(kind)
            ids.append(ident)

        agents = scene.agents
        if len(agents) and self.see_agents:
            box = agents.box
            dx, dy = box[:, 0] - x, box[:, 1] - y
            reach = horizon + 6.0
            for a in np.flatnonzero(dx * dx + dy * dy < reach * reach).tolist():
                ax, ay = float(box[a, 0]), float(box[a, 1])
                j, sa, lat = polyline_frenet(self._pts, self._cum, ax, ay, idx, int((horizon + 6.0) * PPM))
                ahead = sa - s_ego
                if ahead <= 0.0:
                    continue
                ryaw = float(self._yaw[j])
                dyaw = float(box[a, 2]) - ryaw
                c, sn = abs(math.cos(dyaw)), abs(math.sin(dyaw))
                ext_lat = box[a, 3] * sn + box[a, 4] * c
                if abs(lat) >= self._halfw[j] + ext_lat:
                    continue
                gap = ahead - (box[a, 3] * c + box[a, 4] * sn) - hl
                if gap > horizon:
                    continue
                vl = float(agents.velocity[a, 0] * math.cos(ryaw) + agents.velocity[a, 1] * math.sin(ryaw))
                add(gap, max(vl, 0.0), 3.0, 0.5, int(agents.kind[a]), agents.ids[a])

        lights = scene.lights
        if len(lights):
            self._add_lights(lights, idx, s_ego, hl, v, light_horizon, add)

        stops = scene.stop_signs
        if len(stops):
            self._add_stop_signs(stops, idx, s_ego, hl, v, add)
        if v >= 0.1:
            self._stop_wait = 0

        # Stop with the centre just past the route's end: completion is measured at the centre.
        end_gap = self._length - s_ego + 2.0
        if end_gap < horizon:
            add(end_gap, 0.0, 1.0, 0.0, ROUTE_END, None)

        # Desired speed: the slowest profile speed over the next second of travel.
        v0 = max(float(self._vprof[idx: idx + int(v * PPM) + 1].min()), 1.0)
        g = np.asarray(gaps, np.float64)
        vls = np.asarray(vleads, np.float64)
        s0a = np.asarray(s0s, np.float64)
        hda = np.asarray(heads, np.float64)
        acc, arg = _idm(v, v0, g, vls, s0a, hda, IDM_A, IDM_B)
        acc_free = IDM_A * (1.0 - (v / v0) ** 4)

        # Longitudinal control from the IDM acceleration.
        v_ref = max(v + 0.5 * acc, 0.0)
        hold = v_ref < 0.3 and v < 0.5
        if hold:
            throttle, brake = 0.0, 1.0
            self.throttle_pid.step(0.0)
        elif acc < -0.3:
            throttle, brake = 0.0, min(-acc / MAX_DECEL, 1.0)
            self.throttle_pid.step(-1.0)
        else:
            err = min(max(v_ref - v, -1.0), 1.0)
            throttle, brake = min(max(self.throttle_pid.step(err), 0.0), 0.75), 0.0

        # Outputs: path 1..20 m ahead, speed waypoints from the IDM rollout, both in the ego frame.
        path_idx = np.minimum(idx + PPM * np.arange(1, 21), len(self._pts) - 1)
        path_ego = to_ego_frame(self._pts[path_idx], x, y, yaw)
        travel = _rollout(v, s_ego, self._cum, self._vprof, g, vls, s0a, hda, IDM_A, IDM_B, 0.05, 50, 5, 1.0)
        w0, w1 = idx, min(idx + int((travel[-1] + 2.0) * PPM) + 2, len(self._cum))
        sq = s_ego + travel
        cw = self._cum[w0:w1]
        pw = self._pts[w0:w1]
        wp = np.stack([np.interp(sq, cw, pw[:, 0]), np.interp(sq, cw, pw[:, 1])], axis=-1)
        speed_wps = to_ego_frame(wp, x, y, yaw)

        cause = kinds[arg] if arg >= 0 and acc < acc_free - 0.2 else None
        info = {
            "target_speed": v0,
            "desired_accel": float(acc),
            "cause": _CAUSE_NAMES.get(cause) if cause is not None else None,
            "cause_id": ids[arg] if cause is not None else None,
            "cause_distance": float(gaps[arg]) if cause is not None else None,
            "route_index": idx,
            "vehicle": cause in (int(AgentKind.VEHICLE), int(AgentKind.EMERGENCY), int(AgentKind.BICYCLE)),
            "walker": cause == int(AgentKind.PEDESTRIAN),
            "red_light": cause in (RED_LIGHT, YELLOW_LIGHT),
            "stop_sign": cause == STOP_SIGN,
            "stopping": hold or acc < -0.5,
        }
        expert = ExpertState(
            target_speed=float(v_ref),
            desired_speed=float(v0),
            speed=v,
            command=self._command_ahead(idx),
            hazards={k: bool(info[k]) for k in ("vehicle", "walker", "red_light", "stop_sign", "stopping")},
            cause=None if cause is None else Cause(info["cause"], info["cause_id"], info["cause_distance"]),
        )
        return AgentOutput(
            control=Control(throttle=float(throttle), brake=float(brake), steer=float(steer)),
            language=commentary(expert),
            path=path_ego,
            speed_waypoints=speed_wps,
            info=info,
            expert=expert,
        )

    # --------------------------------------------------------------------------- constraints
    def _add_lights(
        self, lights: TrafficLights, idx: int, s_ego: float, hl: float, v: float, light_horizon: float,
        add: _Add,
    ) -> None:
        lanes = self._window_lanes(max(idx - 2 * PPM, 0), idx + int((light_horizon + 40.0) * PPM))
        if not len(lanes):
            return
        state = np.asarray(lights.state)
        via_on_route = np.isin(lights.via_lane, self._route_lanes)
        rows = np.flatnonzero(np.isin(lights.via_lane, lanes) & (state <= LightState.YELLOW)).tolist()
        cand: list[tuple[int, int, int]] = []  # (row, state, fallback route index of the stop line)
        for r in rows:
            k = self._segment_from(int(lights.via_lane[r]), idx - 2 * PPM)
            if k >= 0:
                cand.append((r, int(state[r]), int(self._seg_start[k])))
        # Fallback: an incoming lane on the route none of whose links' via lanes is on the route.
        from_rows = np.isin(lights.from_lane, lanes)
        if np.any(from_rows & ~via_on_route):
            for fl in np.unique(lights.from_lane[from_rows & ~via_on_route]).tolist():
                same = np.flatnonzero(lights.from_lane == fl)
                if via_on_route[same].any():
                    continue
                st = int(state[same].min())
                k = self._segment_from(int(fl), idx - 2 * PPM)
                if st <= LightState.YELLOW and k >= 0:
                    cand.append((int(same[0]), st, int(self._seg_end[k])))
        for r, st, k_line in cand:
            gap = self._line_s(lights.stop_line[r], k_line) - s_ego - hl
            if gap > light_horizon or gap < -1.0 or (gap < 0.0 and v > 2.0):
                continue
            if st == LightState.YELLOW and gap < v * v / 8.0:
                continue  # too close to stop comfortably: go on
            kind = RED_LIGHT if st == LightState.RED else YELLOW_LIGHT
            add(max(gap, 0.0), 0.0, 1.5, 0.1, kind, lights.tls_id[r])

    def _add_stop_signs(
        self, stops: StopSigns, idx: int, s_ego: float, hl: float, v: float, add: _Add
    ) -> None:
        lanes = self._window_lanes(max(idx - 2 * PPM, 0), idx + int(self.light_horizon * PPM) + 40 * PPM)
        if not len(lanes):
            return
        for r in np.flatnonzero(np.isin(stops.lane, lanes)).tolist():
            line = stops.stop_line[r]
            mid = 0.5 * (line[0] + line[1])
            key = (int(stops.lane[r]), round(float(mid[0]), 1), round(float(mid[1]), 1))
            if key in self._cleared_stops:
                continue
            k = self._segment_from(int(stops.lane[r]), idx - 2 * PPM)
            if k < 0:
                continue
            gap = self._line_s(line, int(self._seg_end[k])) - s_ego - hl
            if gap < -1.0 or gap > max(self.light_horizon, v * v / 8.0 + 10.0):
                continue
            if gap < 3.0 and v < 0.1:
                self._stop_wait += 1
                if self._stop_wait >= self.stop_sign_ticks:
                    self._cleared_stops.add(key)
                    self._stop_wait = 0
                    continue
            add(max(gap, 0.0), 0.0, 1.0, 0.1, STOP_SIGN, None)

    # ------------------------------------------------------------------------------ language
    def _command_ahead(self, idx: int) -> int:
        """The route action the commentary names: the first turn, straight crossing or lane change
        within 20 m, else lane follow."""
        cmds = self._cmd[idx: idx + 20 * PPM]
        hits = np.flatnonzero(np.isin(cmds, _ANNOUNCED))
        return int(cmds[hits[0]]) if len(hits) else int(RoadOption.LANEFOLLOW)


@register_agent("constant")
class ConstantAgent:
    """Drives with fixed controls (default: throttle 0.5, straight). Non-privileged; for tests."""

    name = "constant"
    privileged = False

    def __init__(self, throttle: float = 0.5, steer: float = 0.0, brake: float = 0.0) -> None:
        self.control = Control(throttle=float(throttle), brake=float(brake), steer=float(steer))

    def reset(self, route: Route) -> None:
        pass

    def act(self, obs: Observation, scene: Scene | None) -> AgentOutput:
        path = np.stack([np.arange(1.0, 21.0), np.zeros(20)], axis=-1)
        t = 0.25 * np.arange(1, 11)
        speed_wps = np.stack([max(float(obs.speed), 0.0) * t, np.zeros(10)], axis=-1)
        return AgentOutput(
            control=Control(self.control.throttle, self.control.brake, self.control.steer),
            language="Drive straight ahead.",
            path=path,
            speed_waypoints=speed_wps,
        )
