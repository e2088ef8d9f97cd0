"""Implemented Bench2Drive scenario types (HardBreakRoute, ParkedObstacle, PedestrianCrossing).

Behaviour follows the Bench2Drive / scenario-runner descriptions; parameters keep their defaults.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from envs.scenarios.base import Scenario, ScenarioError, register_scenario
from envs.scene import AgentKind, Agents, Scene

HARD_BRAKE_DECEL = 8.0  # m/s^2, an emergency stop of the vehicles ahead
SCENARIO_TIMEOUT_S = 180.0  # leaderboard 2.0's default scenario timeout


class _RouteAnchored(Scenario):
    """Shared helpers for scenarios that place SUMO vehicles on the ego's route."""

    def lane_position(self, s: float) -> tuple[list[str], int, float, int]:
        """(edges from there to the route's end, lane index in edge, position on lane, dense index) at s."""
        lanes = self.ctx.lanes
        route = self.ctx.route
        idx, _, _ = self.route_point(s)
        while idx < len(route.points) - 1 and (route.lane[idx] < 0 or lanes.is_internal[route.lane[idx]]):
            idx += 1
        lane = int(route.lane[idx])
        if lane < 0 or lanes.is_internal[lane]:
            raise ScenarioError(f"route {self.ctx.route_id}: no lane to place scenario {self.name} on")
        x, y = route.points[idx]
        pos = 0.0
        for cand, _dist, s_lane, _yaw in lanes.nearest_lanes(float(x), float(y), radius=4.0):
            if cand == lane:
                pos = s_lane
                break
        edges: list[str] = []
        for li in route.lane[idx:]:
            if li >= 0 and not lanes.is_internal[li]:
                e = lanes.edge_of_lane[li]
                if not edges or edges[-1] != e:
                    edges.append(e)
        return edges, int(lanes.lane_index[lane]), pos, idx


@register_scenario
class HardBreakRoute(_RouteAnchored):
    """The traffic ahead of the ego brakes hard at the trigger point, stays stopped, then drives on."""

    type_name = "HardBreakRoute"
    defaults: ClassVar[dict[str, str]] = {"stop_duration": "6", "lead_distance": "25"}
    LEAD = "sc_hardbrake_lead"

    def setup(self) -> None:
        self._lead_added = False
        self._phase = "approach"
        self._stop_ticks = 0

    def tick(self, scene: Scene) -> None:
        backend = self.ctx.backend
        ego_s = self.ego_s(scene)
        lead_gap = self.float_param("lead_distance")
        if not self._lead_added and ego_s >= self.trigger_s - 80.0:
            edges, lane, pos, _ = self.lane_position(ego_s + lead_gap)
            backend.add_vehicle(
                self.LEAD, edges, lane, pos, speed=max(scene.ego.speed, 5.0), color=(200, 40, 40)
            )
            self._lead_added = True
        if not self.status.triggered or self.LEAD not in backend.vehicle_ids():
            return
        ls = backend.ls
        if self._phase == "braking":
            v = max(ls.vehicle.getSpeed(self.LEAD) - HARD_BRAKE_DECEL * scene.dt, 0.0)
            ls.vehicle.setSpeed(self.LEAD, v)
            if v == 0.0:
                self._phase = "stopped"
        elif self._phase == "stopped":
            self._stop_ticks += 1
            if self._stop_ticks * scene.dt >= self.float_param("stop_duration"):
                ls.vehicle.setSpeedMode(self.LEAD, 31)
                ls.vehicle.setSpeed(self.LEAD, -1)
                self._phase = "released"

    def on_trigger(self, scene: Scene) -> None:
        backend = self.ctx.backend
        if self.LEAD in backend.vehicle_ids():
            backend.ls.vehicle.setSpeedMode(self.LEAD, 0)  # ignore safe-speed limits: brake at our rate
            self._phase = "braking"
            self.status.notes.append("lead vehicle brakes hard")


@register_scenario
class ParkedObstacle(_RouteAnchored):
    """A parked vehicle blocks the ego's lane `distance` m after the trigger; pass it within the timeout."""

    type_name = "ParkedObstacle"
    defaults: ClassVar[dict[str, str]] = {
        "distance": "120",
        "direction": "right",
        "speed": "60",
        "timeout": str(SCENARIO_TIMEOUT_S),
    }
    OBSTACLE = "sc_parked_obstacle"

    def setup(self) -> None:
        if self.param("direction") not in ("left", "right"):
            raise ScenarioError(
                f"route {self.ctx.route_id}: scenario {self.name} direction must be "
                f"'left' or 'right', got {self.param('direction')!r}"
            )
        self.obstacle_s = self.trigger_s + self.float_param("distance")
        edges, lane, pos, _ = self.lane_position(self.obstacle_s)
        self.ctx.backend.park_vehicle(self.OBSTACLE, f"{edges[0]}_{lane}", pos)
        self._timed_out = False

    def tick(self, scene: Scene) -> None:
        if not self.status.triggered or self._timed_out:
            return
        waited = (scene.tick - (self.status.trigger_tick or 0)) * scene.dt
        if self.ego_s(scene) > self.obstacle_s + 5.0:
            self._timed_out = True  # passed: the criterion is settled
            self.status.notes.append("ego passed the obstacle")
        elif waited > self.float_param("timeout"):
            self._timed_out = True
            self.ctx.report(
                "scenario_timeout",
                f"{self.name}: ego did not pass the parked obstacle "
                f"within {self.float_param('timeout'):.0f} s",
                scene,
            )


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
