"""Emergency-brake and merging scenarios driven by vehicles (hard braking, cut-ins, emergency vehicles)."""

from __future__ import annotations

from typing import ClassVar

from envs.scenarios.base import Scenario, register_scenario
from envs.scene import Scene

HARD_BRAKE_DECEL = 8.0  # m/s^2, an emergency stop of the vehicles ahead


@register_scenario
class HardBreakRoute(Scenario):
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
