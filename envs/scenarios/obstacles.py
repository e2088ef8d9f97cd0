"""Overtaking scenarios: something blocks the ego's lane (parked car, accident, construction, cyclists)."""

from __future__ import annotations

from typing import ClassVar

from envs.scenarios.base import SCENARIO_TIMEOUT_S, Scenario, ScenarioError, register_scenario
from envs.scene import Scene


@register_scenario
class ParkedObstacle(Scenario):
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

    def tick(self, scene: Scene) -> None:
        self.check_timeout(scene, self.ego_s(scene) > self.obstacle_s + 5.0, self.float_param("timeout"),
                           "pass the parked obstacle")
