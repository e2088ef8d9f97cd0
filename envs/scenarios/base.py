"""Scenario mechanism: a registry of scenario types instantiated from a route's `<scenario>` elements.

A scenario is anchored on the ego's route: its trigger point (CARLA coordinates in the route file)
is projected onto the dense route, and it fires when the ego's route progress reaches that point.
Scenarios act through the backend (SUMO vehicles they insert and command) and through scripted agents
they move themselves (pedestrians crossing: SUMO's pedestrians keep to sidewalks and crossings).
They report scenario-specific criteria (scenario timeout, yield to emergency vehicle) to the
infraction tracker.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from envs.scene import Agents, Route, Scene


class ScenarioError(ValueError):
    """A scenario element that cannot be instantiated (unknown parameter, bad value, no place on route)."""


@dataclass
class ScenarioContext:
    """What a scenario may touch: the backend, the map, the route, the tracker and a seeded RNG."""

    backend: object  # envs.sumo_backend.SumoBackend (or another backend with the same helpers)
    lanes: object  # envs.maps.network.LaneGraph
    route: Route
    route_id: str
    rng: np.random.Generator
    report: object  # callable(type: str, message: str, scene: Scene) adding a scenario infraction


@dataclass
class ScenarioStatus:
    name: str
    type: str
    implemented: bool
    triggered: bool = False
    trigger_tick: int | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.type,
            "implemented": self.implemented,
            "triggered": self.triggered,
            "trigger_tick": self.trigger_tick,
            "notes": self.notes,
        }


SCENARIO_TIMEOUT_S = 180.0  # leaderboard 2.0's default scenario timeout


class Scenario:
    """Base class. Subclasses set `type_name`, `defaults` (every accepted parameter) and override hooks."""

    type_name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, str]] = {}
    # Parameters Bench2Drive files carry that this implementation accepts but does not use.
    ignored: ClassVar[tuple[str, ...]] = ()
    # One line on what this implementation does differently from CARLA's scenario-runner (README table).
    differs_from_carla: ClassVar[str] = ""
    # Seconds after the trigger at which the scenario shows itself best (the gallery renders then).
    key_moment_s: ClassVar[float] = 3.0
    # Names of class attributes holding actor ids / id prefixes ("sc_..."); every instance gets them
    # suffixed with its own name, so that two instances of a type on one route never share a SUMO id.
    actor_ids: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: object, ctx: ScenarioContext):
        self.spec = spec
        self.ctx = ctx
        self.name: str = getattr(spec, "name", "") or self.type_name
        self.uid = re.sub(r"[^A-Za-z0-9_]", "_", self.name)
        for attr in self.actor_ids:
            setattr(self, attr, f"{getattr(type(self), attr)}_{self.uid}")
        self.params = self._read_params(getattr(spec, "params", {}) or {})
        self.trigger_index, self.trigger_s = self._project_trigger(spec)
        self.status = ScenarioStatus(self.name, self.type_name, implemented=True)

    # ---------------------------------------------------------------------------------- hooks
    def setup(self) -> None:
        """Called once after the backend started (insert parked cars, etc.)."""

    def on_trigger(self, scene: Scene) -> None:
        """Called once when the ego reaches the trigger point."""

    def tick(self, scene: Scene) -> None:
        """Called every tick (before and after the trigger)."""

    def scripted_agents(self) -> Agents:
        """Agents this scenario moves itself (not in the backend's traffic)."""
        return Agents()

    def perturb_control(self, action: np.ndarray, scene: Scene) -> np.ndarray:
        """Change the ego's [throttle, brake, steer] before it is applied (ControlLoss); default: as is."""
        return action

    # ------------------------------------------------------------------------ training sampler
    @classmethod
    def candidate_triggers(cls, route: Route, lanes: object) -> np.ndarray:
        """Route distances (m) where this type's trigger point may be placed on `route` (the sampler
        draws from them). Default: every 5 m on a normal (non-junction) lane, with 30 m of route before
        and 150 m after. Types that need a junction, a two-way road, a side lane, ... override this."""
        s = np.arange(30.0, max(route.length - 150.0, 30.0), 5.0)
        if len(s) == 0 or route.length < 180.0:
            return np.zeros(0)
        idx = np.clip(np.searchsorted(route.cum_length, s), 0, len(route.points) - 1)
        lane = np.asarray(route.lane)[idx]
        ok = lane >= 0
        ok[ok] &= ~np.asarray(lanes.is_internal)[lane[ok]]
        return s[ok]

    @classmethod
    def sample_params(cls, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        """Parameters for a sampled instance, in route-file form ({tag: {"value": ...}} or
        {tag: {"from": .., "to": ..}}), drawn from the ranges Bench2Drive's routes use. Default: none
        (the type's defaults apply)."""
        return {}

    # -------------------------------------------------------------------------------- helpers
    def update(self, scene: Scene) -> None:
        if not self.status.triggered and self.ego_s(scene) >= self.trigger_s:
            self.status.triggered = True
            self.status.trigger_tick = scene.tick
            self.on_trigger(scene)
        self.tick(scene)

    def ego_s(self, scene: Scene) -> float:
        return float(self.ctx.route.cum_length[scene.route_index])

    def seconds_since_trigger(self, scene: Scene) -> float:
        if not self.status.triggered:
            return -1.0
        return (scene.tick - (self.status.trigger_tick or 0)) * scene.dt

    def check_timeout(self, scene: Scene, passed: bool, timeout_s: float = SCENARIO_TIMEOUT_S,
                      what: str = "get past the scenario") -> None:
        """Scenario-runner's ScenarioTimeoutTest: once triggered, the ego has `timeout_s` to get past
        (`passed`); otherwise a scenario_timeout infraction is reported, once."""
        if not self.status.triggered or getattr(self, "_timeout_settled", False):
            return
        if passed:
            self._timeout_settled = True
            self.status.notes.append(f"ego managed to {what}")
        elif self.seconds_since_trigger(scene) > timeout_s:
            self._timeout_settled = True
            self.ctx.report("scenario_timeout", f"{self.name}: ego did not {what} within {timeout_s:.0f} s",
                            scene)

    def lane_position(self, s: float) -> tuple[list[str], int, float, int]:
        """(edges from there to the route's end, lane index in edge, position on lane, dense index) at
        route distance s, moved forward out of a junction when s falls inside one."""
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

    def route_lane_at(self, s: float) -> tuple[int, float]:
        """(LaneGraph lane, position along it) of the route's normal lane at or after route distance s."""
        _, _, pos, idx = self.lane_position(s)
        return int(self.ctx.route.lane[idx]), pos

    def param(self, key: str) -> str:
        return self.params[key]

    def side_param(self, key: str = "direction") -> str:
        """A 'left' / 'right' parameter, checked ('right' where the type has no such parameter)."""
        d = self.params.get(key, "right")
        if d not in ("left", "right"):
            raise ScenarioError(
                f"route {self.ctx.route_id}: scenario {self.name} ({self.type_name}) parameter {key!r} "
                f"must be 'left' or 'right', got {d!r}"
            )
        return d

    def fail(self, reason: str) -> ScenarioError:
        """The error (to raise) for a scenario that cannot be placed on its route."""
        return ScenarioError(
            f"route {self.ctx.route_id}: cannot place scenario {self.name} ({self.type_name}): {reason}"
        )

    def float_param(self, key: str) -> float:
        try:
            return float(self.params[key])
        except ValueError:
            raise ScenarioError(
                f"route {self.ctx.route_id}: scenario {self.name} ({self.type_name}) parameter {key!r} "
                f"must be a number, got {self.params[key]!r}"
            ) from None

    def route_point(self, s: float) -> tuple[int, np.ndarray, float]:
        """Dense-route index, position and yaw at route distance s (clamped to the route)."""
        route = self.ctx.route
        idx = int(np.clip(np.searchsorted(route.cum_length, s), 0, len(route.points) - 1))
        return idx, route.points[idx], float(route.yaw[idx])

    def _read_params(self, raw: dict) -> dict[str, str]:
        """Parameters as strings: `<tag value="v"/>` -> "v"; `<tag from="a" to="b"/>` -> "a,b";
        `<tag x=".." y=".." z=".."/>` -> "x,y,z" (CARLA coordinates)."""
        params = dict(self.defaults)
        for key, attrs in raw.items():
            if key in self.ignored:
                continue
            if key not in self.defaults:
                known = ", ".join(sorted(self.defaults)) or "none"
                raise ScenarioError(
                    f"route {self.ctx.route_id}: scenario {getattr(self.spec, 'name', '?')} "
                    f"({self.type_name}) has unknown parameter {key!r}; known parameters: {known}"
                )
            if not isinstance(attrs, dict):
                params[key] = str(attrs)
            elif "value" in attrs:
                params[key] = attrs["value"]
            elif "from" in attrs and "to" in attrs:
                params[key] = f"{attrs['from']},{attrs['to']}"
            elif "x" in attrs and "y" in attrs:
                params[key] = f"{attrs['x']},{attrs['y']},{attrs.get('z', '0')}"
            else:
                params[key] = ""
        return params

    def _numbers(self, key: str, count: int, what: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in self.params[key].split(","))
        except ValueError:
            values = ()
        if len(values) != count:
            raise ScenarioError(
                f"route {self.ctx.route_id}: scenario {self.name} ({self.type_name}) parameter {key!r} "
                f"must be {what}, got {self.params[key]!r}"
            )
        return values

    def interval_param(self, key: str) -> tuple[float, float]:
        """A `<tag from=".." to=".."/>` parameter as (low, high)."""
        lo, hi = self._numbers(key, 2, "an interval (from, to)")
        return min(lo, hi), max(lo, hi)

    def location_param(self, key: str) -> np.ndarray:
        """A `<tag x=".." y=".." z=".."/>` parameter (CARLA coordinates) as a world-frame (x, y)."""
        x, y, _z = self._numbers(key, 3, "a location (x, y, z)")
        return self.ctx.lanes.carla_to_world(np.array([x, y], dtype=np.float64))

    def _project_trigger(self, spec: object) -> tuple[int, float]:
        route = self.ctx.route
        tp = getattr(spec, "trigger_point", None)
        if tp is None:
            return 0, 0.0
        xy = self.ctx.lanes.carla_to_world(np.array([tp[0], tp[1]], dtype=np.float64))
        d = np.hypot(route.points[:, 0] - xy[0], route.points[:, 1] - xy[1])
        idx = int(np.argmin(d))
        if d[idx] > 30.0:
            raise ScenarioError(
                f"route {self.ctx.route_id}: trigger point of scenario {getattr(spec, 'name', '?')} "
                f"(CARLA x={tp[0]:.1f}, y={tp[1]:.1f}) lies {d[idx]:.0f} m from the route"
            )
        return idx, float(route.cum_length[idx])


class UnimplementedScenario(Scenario):
    """Placeholder for a Bench2Drive type without an implementation: the route runs without it."""

    def __init__(self, spec: object, ctx: ScenarioContext):
        self.spec = spec
        self.ctx = ctx
        self.name = getattr(spec, "name", "")
        self.type_name = getattr(spec, "type", "?")
        self.params = {}
        self.trigger_index, self.trigger_s = 0, math.inf
        self.status = ScenarioStatus(
            self.name,
            self.type_name,
            implemented=False,
            notes=["scenario type not implemented; route ran without it"],
        )


SCENARIOS: dict[str, type[Scenario]] = {}


def register_scenario(cls: type[Scenario]) -> type[Scenario]:
    SCENARIOS[cls.type_name] = cls
    return cls


LIBRARY_MODULES = (
    "envs.scenarios.obstacles",
    "envs.scenarios.crossings",
    "envs.scenarios.junctions",
    "envs.scenarios.junction_flows",
    "envs.scenarios.vehicles",
)


def load_library() -> None:
    """Import the modules that register the implemented scenario types."""
    import importlib

    for mod in LIBRARY_MODULES:
        importlib.import_module(mod)


def build_scenarios(specs: list, ctx: ScenarioContext) -> list[Scenario]:
    load_library()
    out: list[Scenario] = []
    for spec in specs:
        cls = SCENARIOS.get(getattr(spec, "type", ""))
        out.append(cls(spec, ctx) if cls else UnimplementedScenario(spec, ctx))
    return out
