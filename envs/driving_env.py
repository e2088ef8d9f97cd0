"""The closed-loop driving environment (gymnasium) on the embedded SUMO backend.

One episode drives one route: a route from a Leaderboard / Bench2Drive file (with its scenarios) or a
random route on the network. The ego follows the project's kinematic bicycle model at 20 Hz; SUMO
moves the traffic around it. Infractions and route progress are the project's own (`envs.infractions`)
so that the same code scores CARLA runs.

Observation (a dict): `image` (front camera, when enabled), `bev` (when enabled), `speed` (m/s),
`target_points` ((2, 2), the next two route target points in the ego frame, x forward, y left),
`command` (RoadOption of the next target point). Action: `[throttle, brake, steer]` in
[0, 1] x [0, 1] x [-1, 1] (steer positive = left).

Default reward: metres of route progress this tick, minus 10 per collision and 5 per red-light / stop
infraction (learned-policy training uses the learner's reward functions, not this one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from envs.dynamics import EgoDynamics
from envs.infractions import InfractionTracker
from envs.maps.build import resolve_map
from envs.maps.network import LaneGraph, load_lane_graph
from envs.routes import RouteSpec, map_route, parse_routes, random_route, select_routes
from envs.scenarios.base import ScenarioContext, build_scenarios
from envs.scene import Agents, EgoState, Observation, RoadOption, Route, Scene
from envs.sumo_backend import SimulatorError, SumoBackend, TrafficConfig

COLLISION_PENALTY = 10.0
RULE_PENALTY = 5.0


@dataclass
class CameraConfig:
    enabled: bool = True
    width: int = 256
    height: int = 128
    fov: float = 110.0


@dataclass
class BevConfig:
    enabled: bool = False
    size: int = 192
    meters_per_pixel: float = 0.25


@dataclass
class EnvConfig:
    map: str = "urban_grid"  # procedural map name, OpenDRIVE file or .net.xml
    routes: str | None = None  # Leaderboard 1.0 / Bench2Drive route XML; None = random routes
    route_ids: list[str] | None = None  # restrict to these ids; reset cycles through them in order
    random_route_length: tuple[float, float] = (300.0, 700.0)
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    bev: BevConfig = field(default_factory=BevConfig)
    max_ticks: int = 4000
    scenarios: bool = True
    cache_dir: str | None = None

    @staticmethod
    def from_yaml(path: str | Path) -> EnvConfig:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"environment config not found: {path}")
        return EnvConfig.from_dict(yaml.safe_load(path.read_text()) or {})

    @staticmethod
    def from_dict(d: dict[str, Any]) -> EnvConfig:
        d = dict(d)
        sub = {"traffic": TrafficConfig, "camera": CameraConfig, "bev": BevConfig}
        for key, cls in sub.items():
            if isinstance(d.get(key), dict):
                bad = set(d[key]) - set(cls.__dataclass_fields__)
                if bad:
                    raise ValueError(f"unknown environment config keys in {key!r}: {sorted(bad)}")
                d[key] = cls(**d[key])
        unknown = set(d) - set(EnvConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown environment config keys: {sorted(unknown)}")
        if "random_route_length" in d:
            d["random_route_length"] = tuple(d["random_route_length"])
        return EnvConfig(**d)


class DrivingEnv(gym.Env):
    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, config: EnvConfig | dict | None = None, render_mode: str | None = None, **kwargs: Any):
        if config is None or isinstance(config, dict):
            config = EnvConfig.from_dict({**(config or {}), **kwargs})
        self.config = config
        self.render_mode = render_mode
        self.net_path = resolve_map(config.map, cache_dir=config.cache_dir)
        self.lanes: LaneGraph = load_lane_graph(self.net_path)
        self.route_specs: list[RouteSpec] = []
        if config.routes:
            self.route_specs = parse_routes(config.routes)
            if config.route_ids:
                self.route_specs = select_routes(self.route_specs, config.route_ids)
        self._route_cache: dict[str, Route] = {}
        self._next_route = 0
        self.backend = SumoBackend(self.lanes, config.traffic)
        self.dynamics = EgoDynamics()
        self._camera = self._bev = self._raster = None
        self._setup_sensors()
        self.observation_space = self._make_observation_space()
        self.action_space = gym.spaces.Box(
            low=np.array([0.0, 0.0, -1.0], np.float32), high=np.array([1.0, 1.0, 1.0], np.float32)
        )
        self.scene: Scene | None = None
        self.route: Route | None = None
        self.route_spec: RouteSpec | None = None
        self.tracker: InfractionTracker | None = None
        self.scenarios: list = []
        self._target_s = np.zeros(0)
        self._needs_reset = True
        self._scenario_pending: list = []
        self._last_obs: dict | None = None

    # -------------------------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Start an episode. `options` (all optional): `route_id` (a route of the route file), `route` (an
        `envs.scene.Route` to drive instead), `scenarios` (a list of `envs.routes.ScenarioSpec`, trigger
        points in CARLA coordinates, i.e. `lanes.world_to_carla`; they replace the route's own scenarios
        and apply even when `config.scenarios` is False)."""
        super().reset(seed=seed)
        options = options or {}
        episode_seed = int(self.np_random.integers(2**31 - 1))
        self.route_spec, self.route = self._choose_route(options, episode_seed)
        ego = EgoState(
            float(self.route.points[0, 0]), float(self.route.points[0, 1]), float(self.route.yaw[0]), 0.0
        )
        self.backend.start(episode_seed, self.route, ego)
        self.tracker = InfractionTracker(self.route, self.lanes, max_ticks=self.config.max_ticks)
        self._target_s = self._target_distances(self.route)
        self.scenarios = []
        self._scenario_pending = []
        if options.get("scenarios") is not None:
            specs = list(options["scenarios"])
        elif self.config.scenarios and self.route_spec is not None:
            specs = self.route_spec.scenarios
        else:
            specs = []
        if specs:
            ctx = ScenarioContext(
                self.backend,
                self.lanes,
                self.route,
                self.route.route_id,
                np.random.default_rng(episode_seed),
                self._report_scenario_infraction,
            )
            self.scenarios = build_scenarios(specs, ctx)
            for sc in self.scenarios:
                self._run_scenario_hook(sc, sc.setup)
        self.scene = self._build_scene(ego, tick=0)
        self.tracker.update(self.scene)
        self.scene.route_index = self.tracker.route_index
        self._needs_reset = False
        self._last_obs = self._observe()
        return self._last_obs, self._info([])

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        if self._needs_reset or self.scene is None:
            raise RuntimeError("call reset() before step() (the last episode ended or the simulator failed)")
        a = np.clip(np.asarray(action, dtype=np.float64), self.action_space.low, self.action_space.high)
        for sc in self.scenarios:
            a = sc.perturb_control(a, self.scene)
        ego = self.dynamics.step(self.scene.ego, float(a[0]), float(a[1]), float(a[2]))
        try:
            self.backend.step(ego)
            self.scene = self._build_scene(ego, tick=self.scene.tick + 1)
        except SimulatorError:
            self._needs_reset = True
            raise
        before = self.tracker.completion
        new = self.tracker.update(self.scene)
        self.scene.route_index = self.tracker.route_index
        for sc in self.scenarios:
            self._run_scenario_hook(sc, sc.update, self.scene)
        new = new + self._pending_scenario_infractions()
        progress = (self.tracker.completion - before) / 100.0 * self.route.length
        reward = progress - sum(
            COLLISION_PENALTY if inf.type.startswith("collision") else RULE_PENALTY
            for inf in new
            if inf.type
            in (
                "collision_pedestrian",
                "collision_vehicle",
                "collision_static",
                "red_light",
                "stop_infraction",
            )
        )
        truncated = self.tracker.done and self.tracker.timed_out
        terminated = self.tracker.done and not truncated
        if terminated or truncated:
            self._needs_reset = True
        self._last_obs = self._observe()
        return self._last_obs, float(reward), terminated, truncated, self._info(new)

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self.scene is None:
            return None
        from envs.render import compose_frame

        cam = self._last_obs.get("image") if self._last_obs else None  # the frame this tick already drew
        if cam is None and self._camera:
            cam = self._camera.render(self.scene, self._raster)
        bev = self._last_obs.get("bev") if self._last_obs else None
        if bev is None and self._bev:
            bev = self._bev.render(self.scene, self._raster)
        t = self.tracker
        lines = [
            f"{self.route.route_id}  t={self.scene.time:5.1f}s  v={self.scene.ego.speed * 3.6:4.1f} km/h",
            f"completion {t.completion:5.1f}%  infractions {t.infraction_count}",
        ]
        return compose_frame(cam, bev, lines)

    def close(self) -> None:
        self.backend.close()

    # -------------------------------------------------------------------------------- records
    def record(self) -> dict:
        """The Bench2Drive-style record of the current (or last) route."""
        rec = self.tracker.record()
        rec["town"] = self.route.town
        rec["map"] = str(self.config.map)
        rec["scenarios"] = [sc.status.as_dict() for sc in self.scenarios]
        unimpl = sorted({s["type"] for s in rec["scenarios"] if not s["implemented"]})
        if unimpl:
            rec.setdefault("notes", []).append(f"scenario types not implemented: {', '.join(unimpl)}")
        return rec

    # ------------------------------------------------------------------------------- internals
    def _setup_sensors(self) -> None:
        cam, bev = self.config.camera, self.config.bev
        if not (cam.enabled or bev.enabled or self.render_mode == "rgb_array"):
            return
        from envs.render import BevRenderer, FrontCamera, MapRaster

        self._raster = MapRaster.build(self.lanes)
        if cam.enabled or self.render_mode == "rgb_array":
            self._camera = FrontCamera(width=cam.width, height=cam.height, fov_deg=cam.fov)
        if bev.enabled or self.render_mode == "rgb_array":
            self._bev = BevRenderer(size=(bev.size, bev.size), meters_per_pixel=bev.meters_per_pixel)

    def _make_observation_space(self) -> gym.spaces.Dict:
        spaces: dict[str, gym.Space] = {
            "speed": gym.spaces.Box(0.0, 100.0, (1,), np.float32),
            "target_points": gym.spaces.Box(-1000.0, 1000.0, (2, 2), np.float32),
            "command": gym.spaces.Discrete(7),
        }
        cam, bev = self.config.camera, self.config.bev
        if cam.enabled:
            spaces["image"] = gym.spaces.Box(0, 255, (cam.height, cam.width, 3), np.uint8)
        if bev.enabled:
            spaces["bev"] = gym.spaces.Box(0, 255, (bev.size, bev.size, 3), np.uint8)
        return gym.spaces.Dict(spaces)

    def _choose_route(self, options: dict, seed: int) -> tuple[RouteSpec | None, Route]:
        if "route" in options and isinstance(options["route"], Route):
            return None, options["route"]
        if self.route_specs:
            if "route_id" in options:
                spec = select_routes(self.route_specs, [str(options["route_id"])])[0]
            else:
                spec = self.route_specs[self._next_route % len(self.route_specs)]
                self._next_route += 1
            if spec.route_id not in self._route_cache:
                self._route_cache[spec.route_id] = map_route(spec, self.lanes)
            return spec, self._route_cache[spec.route_id]
        lo, hi = self.config.random_route_length
        return None, random_route(self.lanes, np.random.default_rng(seed), min_length=lo, max_length=hi)

    def _build_scene(self, ego: EgoState, tick: int) -> Scene:
        agents = self.backend.read_agents()
        scripted = [sc.scripted_agents() for sc in self.scenarios]
        if any(len(s) for s in scripted):
            agents = Agents.concat([agents, *scripted])
        return Scene(
            tick=tick,
            time=tick * self.backend.step_length,
            ego=ego,
            agents=agents,
            lights=self.backend.read_lights(),
            stop_signs=self.backend.stop_signs,
            route=self.route,
            lanes=self.lanes,
            route_index=self.tracker.route_index if self.tracker else 0,
        )

    def _target_distances(self, route: Route) -> np.ndarray:
        out = np.empty(len(route.target_points))
        start = 0
        for k, p in enumerate(route.target_points):
            d = np.hypot(route.points[start:, 0] - p[0], route.points[start:, 1] - p[1])
            start += int(np.argmin(d))
            out[k] = route.cum_length[start]
        return out

    def _observe(self) -> dict:
        scene = self.scene
        ego = scene.ego
        s = self.route.cum_length[scene.route_index]
        k = int(np.searchsorted(self._target_s, s + 1.0))
        k = min(k, len(self._target_s) - 1)
        k2 = min(k + 1, len(self._target_s) - 1)
        pts = self.route.target_points[[k, k2]] - np.array([ego.x, ego.y])
        c, sn = math.cos(-ego.yaw), math.sin(-ego.yaw)
        local = np.stack([pts[:, 0] * c - pts[:, 1] * sn, pts[:, 0] * sn + pts[:, 1] * c], axis=1)
        cmd = int(self.route.target_commands[k])
        obs: dict[str, Any] = {
            "speed": np.array([min(ego.speed, 100.0)], np.float32),
            "target_points": np.clip(local, -1000, 1000).astype(np.float32),
            "command": cmd if 0 <= cmd <= 6 else int(RoadOption.LANEFOLLOW),
        }
        if self.config.camera.enabled:
            obs["image"] = self._camera.render(scene, self._raster)
        if self.config.bev.enabled:
            obs["bev"] = self._bev.render(scene, self._raster)
        return obs

    def observation(self) -> Observation:
        """The last observation (as returned by reset/step) as the policy-facing `Observation` dataclass."""
        if self._last_obs is None:
            raise RuntimeError("call reset() before observation()")
        o = self._last_obs
        return Observation(
            image=o.get("image"),
            speed=float(o["speed"][0]),
            target_points=o["target_points"],
            command=int(o["command"]),
            bev=o.get("bev"),
        )

    def _run_scenario_hook(self, sc, hook, *args) -> None:
        """Run a scenario hook; a command SUMO refuses (a scenario placing a vehicle where it cannot go)
        becomes a SimulatorError naming the scenario, so a driving job records the route and goes on."""
        try:
            hook(*args)
        except self.backend.ls.TraCIException as exc:
            self._needs_reset = True
            msg = f"scenario {sc.name} ({sc.type_name}): SUMO refused a command: {exc}"
            raise SimulatorError(msg) from exc

    def _report_scenario_infraction(self, kind: str, message: str, scene: Scene) -> None:
        self._scenario_pending.append(self.tracker.add_scenario_infraction(kind, message, scene))

    def _pending_scenario_infractions(self) -> list:
        out, self._scenario_pending = list(self._scenario_pending), []
        return out

    def _info(self, new: list) -> dict:
        t = self.tracker
        return {
            "route_id": self.route.route_id,
            "tick": self.scene.tick,
            "completion": t.completion,
            "status": t.status,
            "infractions": [inf.as_dict() for inf in new],
        }

