"""SUMO backend through libsumo: background traffic, pedestrians, traffic lights, and the ego's footprint.

The ego's motion is the project's own (`envs.dynamics`); every tick the backend places the ego into
SUMO with `moveToXY` so that SUMO's drivers react to it. Agents near the ego are read through one
context subscription per tick (no per-vehicle calls), which keeps the per-tick overhead small.

SUMO (without its sublane model) puts a vehicle on exactly one lane, so an ego straddling two lanes
is invisible to the drivers of the other one: they would drive through it, which CARLA's traffic
manager does not do. Each tick the backend therefore places a hidden "shadow" vehicle, moving with
the ego, on every other lane the ego's footprint reaches into (`SHADOW_REACH`); SUMO's drivers
brake for it as for any vehicle ahead.

libsumo runs one simulation per process: a second `SumoBackend.start` in the same process takes
the simulation over and the first backend raises `SimulatorError` if it is used again. Ray actors
give each worker its own process, hence its own SUMO.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import numpy as np

from envs.maps.network import LaneGraph
from envs.scene import (
    AgentKind,
    Agents,
    EgoState,
    LightState,
    Route,
    StopSigns,
    TrafficLights,
    sumo_angle_from_yaw,
)

EGO_ID = "ego"
_STATE_LUT = np.full(256, 3, np.int8)  # SUMO link-state character -> LightState (unknown = OFF)
for _chars, _state in (("rR", 0), ("yYu", 1), ("gGs", 2), ("oO", 3)):
    for _c in _chars:
        _STATE_LUT[ord(_c)] = _state
_PERSON_HALF = 0.3


class SimulatorError(RuntimeError):
    """SUMO is missing, died, or was taken over; reset the environment to start a fresh simulation."""


def _libsumo():
    try:
        import libsumo
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise SimulatorError(
            "libsumo is not installed: `pip install eclipse-sumo libsumo` (see README set-up)"
        ) from exc
    return libsumo


def _constants():
    import traci.constants as tc

    return tc


@dataclass
class TrafficConfig:
    vehicles: int = 40  # background vehicles kept alive near the ego route
    pedestrians: int = 10  # background pedestrians on sidewalks near the ego route
    spawn_radius: float = 250.0  # traffic is spawned on lanes within this distance of the route
    despawn_radius: float = 350.0  # and removed (then respawned) beyond this distance of the ego
    scene_radius: float = 90.0  # agents within this distance of the ego enter the Scene
    respawn_every: int = 20  # ticks between traffic top-ups


SHADOW_PREFIX = "ego_shadow"
# A footprint corner this close to a lane's centre line puts the ego into that lane: a car driving
# centred there (half width 0.9 m) would touch it, with 0.3 m to spare.
SHADOW_REACH = 1.2


_ACTIVE: list[SumoBackend | None] = [None]


class SumoBackend:
    def __init__(self, lanes: LaneGraph, traffic: TrafficConfig | None = None, step_length: float = 0.05):
        self.lanes = lanes
        self.traffic = traffic or TrafficConfig()
        self.step_length = step_length
        self.ls = _libsumo()
        self.tc = _constants()
        self._running = False
        self._rng = np.random.default_rng(0)
        self.kind_override: dict[str, int] = {}  # SUMO ids driven by scenarios with a Scene kind
        self.color_override: dict[str, tuple[int, int, int]] = {}
        self.hidden: set[str] = set()  # SUMO vehicles kept out of the Scene (lane blockers under props)
        self.shadows: dict[int, str] = {}  # lane -> hidden vehicle standing in for the ego there
        self._edge_lanes = self._drivable_edges()
        self._walk_edges = sorted({lanes.edge_of_lane[i] for i in np.flatnonzero(lanes.is_sidewalk)})
        self._tls_ids = sorted(set(lanes.tl_ids))
        self._tl_col = {t: k for k, t in enumerate(self._tls_ids)}
        self._tl_rows = np.array([self._tl_col[t] for t in lanes.tl_ids], np.int64)
        self._tl_links = np.asarray(lanes.tl_link_index, np.int64)
        self._tl_codes = np.full((len(self._tls_ids), int(self._tl_links.max(initial=0)) + 1), 3, np.int8)
        self._tl_state = np.full(len(lanes.tl_ids), 3, np.int8)
        self._tl_last_strings: tuple[str, ...] = ()
        self.stop_signs = self._static_stop_signs()
        self._tl_static = self._static_light_geometry()
        self._spawn_edges: list[str] = []
        self._spawn_walk: list[str] = []
        self._counter = 0
        self._shadow_counter = 0
        self.tick = 0

    # ------------------------------------------------------------------------------- lifecycle
    def start(self, seed: int, route: Route, ego: EgoState) -> None:
        """(Re)start SUMO for a new episode: network, seed, ego footprint, initial traffic."""
        self.close()
        if _ACTIVE[0] is not None and _ACTIVE[0] is not self:
            _ACTIVE[0]._running = False
        args = [
            "sumo",
            "-n",
            self.lanes.net_path,
            "--step-length",
            str(self.step_length),
            "--seed",
            str(int(seed) % (2**31)),
            "--no-step-log",
            "true",
            "--no-warnings",
            "true",
            "--collision.action",
            "none",  # collisions are the project's own judgement
            "--time-to-teleport",
            "-1",
            "--ignore-route-errors",
            "true",
            "--default.speeddev",
            "0.1",
            "--pedestrian.model",
            "nonInteracting",
            "--error-log",
            os.devnull,
        ]
        with contextlib.suppress(Exception):  # a simulation left open by someone else in this process
            self.ls.close()
        try:
            self.ls.start(args)
        except Exception as exc:
            raise SimulatorError(f"SUMO failed to start on {self.lanes.net_path}: {exc}") from exc
        _ACTIVE[0] = self
        self._running = True
        self._rng = np.random.default_rng(seed)
        self.kind_override.clear()
        self.color_override.clear()
        self.hidden.clear()
        self.shadows.clear()
        self._shadow_counter = 0
        self._counter = 0
        self.tick = 0
        self._tl_last_strings = ()
        self._select_spawn_area(route)
        self._add_ego(route, ego)
        self._fill_traffic(initial=True)
        self._subscribe()

    def close(self) -> None:
        if self._running and _ACTIVE[0] is self:
            with contextlib.suppress(Exception):
                self.ls.close()
            _ACTIVE[0] = None
        self._running = False

    @property
    def running(self) -> bool:
        return self._running and _ACTIVE[0] is self

    def _check(self) -> None:
        if not self.running:
            raise SimulatorError(
                "the SUMO simulation is not running (it died, was closed, or another environment in this "
                "process took libsumo over: libsumo runs one simulation per process); call reset()"
            )

    # ---------------------------------------------------------------------------------- ticking
    def step(self, ego: EgoState) -> None:
        """Place the ego at its new pose and advance SUMO by one tick."""
        self._check()
        ls = self.ls
        try:
            fx = ego.x + ego.half_length * math.cos(ego.yaw)  # SUMO positions are the front bumper
            fy = ego.y + ego.half_length * math.sin(ego.yaw)
            try:
                ls.vehicle.moveToXY(EGO_ID, "", -1, fx, fy, sumo_angle_from_yaw(ego.yaw), keepRoute=1)
            except ls.TraCIException:
                ls.vehicle.moveToXY(EGO_ID, "", -1, fx, fy, sumo_angle_from_yaw(ego.yaw), keepRoute=2)
            ls.vehicle.setSpeed(EGO_ID, max(ego.speed, 0.0))
            self._place_shadows(ego)
            ls.simulationStep()
            self.tick += 1
            if self.tick % self.traffic.respawn_every == 0:
                self._maintain_traffic(ego)
        except SimulatorError:
            raise
        except Exception as exc:
            self._running = False
            raise SimulatorError(f"SUMO failed at tick {self.tick}: {exc}") from exc

    def lanes_reached(self, ego: EgoState, sumo_lane: str) -> dict[int, tuple[float, float]]:
        """Normal drivable lanes other than `sumo_lane` (the ego's lane in SUMO) that the ego's footprint
        reaches into: lane -> (arc length of the footprint's front along it, its heading there)."""
        lanes = self.lanes
        c, s = math.cos(ego.yaw), math.sin(ego.yaw)
        reached: dict[int, tuple[float, float]] = {}
        for fwd, left in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            px = ego.x + fwd * ego.half_length * c - left * ego.half_width * s
            py = ego.y + fwd * ego.half_length * s + left * ego.half_width * c
            for lane, _dist, pos, lyaw in lanes.nearest_lanes(px, py, radius=SHADOW_REACH):
                if lanes.is_internal[lane] or lanes.lane_ids[lane] == sumo_lane:
                    continue
                if lane not in reached or pos > reached[lane][0]:
                    reached[lane] = (pos, lyaw)
        return reached

    def _place_shadows(self, ego: EgoState) -> None:
        """Keep one hidden shadow vehicle, at the ego's front and speed along the lane, on every other
        lane the ego reaches into; remove the shadows of lanes it has left."""
        ls = self.ls
        reached = self.lanes_reached(ego, ls.vehicle.getLaneID(EGO_ID))
        for lane in [ln for ln in self.shadows if ln not in reached]:
            vid = self.shadows.pop(lane)
            with contextlib.suppress(ls.TraCIException):
                ls.vehicle.remove(vid)
            self.hidden.discard(vid)
        for lane, (pos, lyaw) in reached.items():
            lane_id = self.lanes.lane_ids[lane]
            pos = float(np.clip(pos, 0.1, self.lanes.length[lane] - 0.1))
            speed = max(ego.speed * math.cos(ego.yaw - lyaw), 0.0)
            vid = self.shadows.get(lane)
            if vid is not None:
                try:
                    ls.vehicle.moveTo(vid, lane_id, pos)
                    ls.vehicle.setSpeed(vid, speed)
                    continue
                except ls.TraCIException:  # it ran off its one-edge route last tick: SUMO removed it
                    self.hidden.discard(vid)
            self._shadow_counter += 1
            vid = f"{SHADOW_PREFIX}{self._shadow_counter}"
            ls.route.add(f"route_{vid}", [self.lanes.edge_of_lane[lane]])
            ls.vehicle.add(vid, f"route_{vid}", typeID="ego_type", departSpeed="0",
                           departLane=str(int(self.lanes.lane_index[lane])), departPos=str(pos))
            ls.vehicle.setSpeedMode(vid, 0)
            ls.vehicle.setLaneChangeMode(vid, 0)
            ls.vehicle.moveTo(vid, lane_id, pos)  # inserts it now, whatever the gap to the traffic there
            ls.vehicle.setSpeed(vid, speed)
            self.shadows[lane] = vid
            self.hidden.add(vid)

    # ---------------------------------------------------------------------------------- reading
    def read_agents(self) -> Agents:
        """Vehicles and pedestrians within `scene_radius` of the ego (from the context subscriptions)."""
        self._check()
        tc = self.tc
        ls = self.ls
        # libsumo returns both context subscriptions of the ego merged: tell them apart by their variables.
        merged = dict(ls.vehicle.getContextSubscriptionResults(EGO_ID) or {})
        merged.update(ls.person.getContextSubscriptionResults(EGO_ID) or {})
        veh = {k: v for k, v in merged.items() if tc.VAR_LENGTH in v and k != EGO_ID}
        if self.hidden:
            veh = {k: v for k, v in veh.items() if k not in self.hidden}
        per = {k: v for k, v in merged.items() if tc.VAR_LENGTH not in v}
        ids = list(veh)
        n_v, n_p = len(ids), len(per)
        n = n_v + n_p
        box = np.zeros((n, 5))
        vel = np.zeros((n, 2))
        speed = np.zeros(n)
        accel = np.zeros(n)
        height = np.zeros(n)
        kind = np.zeros(n, np.int8)
        color = np.zeros((n, 3), np.uint8)
        for k, vid in enumerate(ids):
            d = veh[vid]
            fx, fy = d[tc.VAR_POSITION]
            yaw = math.radians(90.0 - d[tc.VAR_ANGLE])
            c, s = math.cos(yaw), math.sin(yaw)
            hl = 0.5 * d[tc.VAR_LENGTH]
            box[k] = (fx - hl * c, fy - hl * s, math.atan2(s, c), hl, 0.5 * d[tc.VAR_WIDTH])
            v = d[tc.VAR_SPEED]
            speed[k] = v
            vel[k] = (v * c, v * s)
            accel[k] = d[tc.VAR_ACCELERATION]
            height[k] = d[tc.VAR_HEIGHT]
            vclass = d[tc.VAR_VEHICLECLASS]
            kd = (
                AgentKind.BICYCLE
                if vclass == "bicycle"
                else (AgentKind.EMERGENCY if vclass == "emergency" else AgentKind.VEHICLE)
            )
            kind[k] = self.kind_override.get(vid, kd)
            if vid in self.color_override:
                color[k] = self.color_override[vid]
        pids = list(per)
        for k, pid in enumerate(pids, start=n_v):
            d = per[pid]
            x, y = d[tc.VAR_POSITION]
            yaw = math.radians(90.0 - d[tc.VAR_ANGLE])
            v = d[tc.VAR_SPEED]
            box[k] = (x, y, yaw, _PERSON_HALF, _PERSON_HALF)
            vel[k] = (v * math.cos(yaw), v * math.sin(yaw))
            speed[k] = v
            height[k] = 1.8
            kind[k] = AgentKind.PEDESTRIAN
        return Agents(
            ids=ids + pids,
            kind=kind,
            box=box,
            height=height,
            velocity=vel,
            speed=speed,
            accel=accel,
            color=color,
        )

    def read_lights(self) -> TrafficLights:
        """Per-link light states, vectorised; the previous array is reused while no light changed."""
        self._check()
        if not self._tls_ids:
            return TrafficLights()
        res = self.ls.trafficlight.getAllSubscriptionResults()
        var = self.tc.TL_RED_YELLOW_GREEN_STATE
        strings = tuple(res.get(t, {}).get(var, "") for t in self._tls_ids)
        if strings != self._tl_last_strings:
            width = self._tl_codes.shape[1]
            self._tl_codes.fill(LightState.OFF)
            for col, text in enumerate(strings):
                raw = np.frombuffer(text.encode()[:width], np.uint8)
                self._tl_codes[col, : len(raw)] = _STATE_LUT[raw]
            self._tl_state = self._tl_codes[self._tl_rows, self._tl_links]
            self._tl_last_strings = strings
        pos, stop_line = self._tl_static
        return TrafficLights(
            tls_id=self.lanes.tl_ids,
            state=self._tl_state,
            position=pos,
            stop_line=stop_line,
            from_lane=self.lanes.tl_from_lane,
            via_lane=self.lanes.tl_via_lane,
        )

    # ----------------------------------------------------------------------- scenario helpers
    def add_vehicle(
        self,
        vid: str,
        edges: list[str],
        lane: int,
        pos: float,
        speed: float | str,
        vclass: str = "passenger",
        kind: int | None = None,
        color: tuple[int, int, int] | None = None,
        length: float | None = None,
        max_speed: float | None = None,
    ) -> None:
        """Insert a vehicle for a scenario at `pos` metres (front bumper) on lane `lane` of the first edge,
        driving along `edges` at `speed` m/s (or "max": the highest safe speed, so that SUMO does not hold
        the insertion back). `vclass` is a SUMO vehicle class (passenger, bicycle, emergency, ...);
        `length` overrides the class's length; `max_speed` caps its speed (m/s)."""
        self._check()
        ls = self.ls
        rid = f"route_{vid}"
        ls.route.add(rid, edges)
        vtype = "DEFAULT_VEHTYPE"
        if vclass != "passenger" or length is not None:
            vtype = f"type_{vclass}" + (f"_{length:.1f}" if length is not None else "")
            if vtype not in ls.vehicletype.getIDList():
                ls.vehicletype.copy("DEFAULT_VEHTYPE", vtype)
                ls.vehicletype.setVehicleClass(vtype, vclass)
                if vclass == "bicycle":
                    ls.vehicletype.setLength(vtype, 1.8)
                    ls.vehicletype.setWidth(vtype, 0.65)
                    ls.vehicletype.setMinGap(vtype, 0.5)
                if vclass == "emergency":
                    ls.vehicletype.setParameter(vtype, "has.bluelight.device", "true")
                    ls.vehicletype.setLength(vtype, 6.5)
                    ls.vehicletype.setWidth(vtype, 2.2)
                if length is not None:
                    ls.vehicletype.setLength(vtype, float(length))
        ls.vehicle.add(
            vid,
            rid,
            typeID=vtype,
            departLane=str(lane),
            departPos=str(max(pos, 0.0)),
            departSpeed=speed if isinstance(speed, str) else str(max(speed, 0.0)),
        )
        if max_speed is not None:
            ls.vehicle.setMaxSpeed(vid, float(max_speed))
        if kind is not None:
            self.kind_override[vid] = kind
        if color is not None:
            self.color_override[vid] = color
            ls.vehicle.setColor(vid, (*color, 255))

    def park_vehicle(
        self,
        vid: str,
        lane_id: str,
        pos: float,
        kind: int = AgentKind.PARKED_VEHICLE,
        length: float | None = None,
        color: tuple[int, int, int] | None = None,
        hidden: bool = False,
    ) -> None:
        """A stopped vehicle occupying the lane at `pos` (its front bumper) that SUMO traffic treats as an
        obstacle. `hidden` keeps it out of the Scene: a blocker under props the scenario draws itself."""
        self._check()
        lane = self.lanes.lane(lane_id)
        edge = self.lanes.edge_of_lane[lane]
        pos = float(np.clip(pos, 0.1, self.lanes.length[lane] - 0.1))
        self.add_vehicle(vid, [edge], int(self.lanes.lane_index[lane]), pos, 0.0, kind=kind, color=color,
                         length=length)
        self.ls.vehicle.setSpeedMode(vid, 0)
        self.ls.vehicle.setLaneChangeMode(vid, 0)
        self.ls.vehicle.setSpeed(vid, 0.0)
        if hidden:
            self.hidden.add(vid)

    def remove_vehicles_near(self, xy: np.ndarray, radius: float, prefix: str = "bg") -> int:
        """Remove background vehicles (ids starting with `prefix`) within `radius` of any point in `xy`
        (K, 2), as Bench2Drive's background manager clears the area a scenario plays in."""
        self._check()
        pts = np.atleast_2d(np.asarray(xy, np.float64))
        removed = 0
        for vid in self.ls.vehicle.getIDList():
            if not vid.startswith(prefix):
                continue
            p = np.asarray(self.ls.vehicle.getPosition(vid))
            if np.min(np.hypot(pts[:, 0] - p[0], pts[:, 1] - p[1])) <= radius:
                self.ls.vehicle.remove(vid)
                removed += 1
        return removed

    def vehicle_ids(self) -> tuple[str, ...]:
        self._check()
        return self.ls.vehicle.getIDList()

    # -------------------------------------------------------------------------------- internals
    def _drivable_edges(self) -> list[str]:
        lanes = self.lanes
        edges = {lanes.edge_of_lane[i] for i in np.flatnonzero(lanes.drivable & ~lanes.is_internal)}
        return sorted(edges)

    def _select_spawn_area(self, route: Route) -> None:
        """Edges whose midpoint lies within spawn_radius of the route: traffic is kept where it matters."""
        lanes = self.lanes
        mids = {}
        for i in range(len(lanes)):
            e = lanes.edge_of_lane[i]
            if e not in mids and not lanes.is_internal[i]:
                pl = lanes.polyline(i)
                mids[e] = pl[len(pl) // 2]
        pts = route.points[:: max(1, len(route.points) // 200)]
        r2 = self.traffic.spawn_radius**2

        def near(e: str) -> bool:
            d = pts - mids[e]
            return bool(np.min(np.einsum("ij,ij->i", d, d)) <= r2)

        self._spawn_edges = [e for e in self._edge_lanes if near(e)] or list(self._edge_lanes)
        self._spawn_walk = [e for e in self._walk_edges if e in mids and near(e)]

    def _add_ego(self, route: Route, ego: EgoState) -> None:
        ls = self.ls
        edges = []
        for lane in route.lane:
            if lane < 0 or self.lanes.is_internal[lane]:
                continue
            e = self.lanes.edge_of_lane[lane]
            if not edges or edges[-1] != e:
                edges.append(e)
        ls.vehicletype.copy("DEFAULT_VEHTYPE", "ego_type")
        ls.vehicletype.setLength("ego_type", 2 * ego.half_length)
        ls.vehicletype.setWidth("ego_type", 2 * ego.half_width)
        ls.vehicletype.setMinGap("ego_type", 0.5)
        ls.vehicletype.setColor("ego_type", (255, 255, 255, 255))
        try:
            ls.route.add("ego_route", edges)
            ls.vehicle.add(EGO_ID, "ego_route", typeID="ego_type", departPos="0", departSpeed="0")
        except Exception:
            ls.route.add("ego_route_short", edges[:1])
            ls.vehicle.add(EGO_ID, "ego_route_short", typeID="ego_type", departPos="0", departSpeed="0")
        ls.vehicle.setSpeedMode(EGO_ID, 0)
        ls.vehicle.setLaneChangeMode(EGO_ID, 0)
        fx = ego.x + ego.half_length * math.cos(ego.yaw)
        fy = ego.y + ego.half_length * math.sin(ego.yaw)
        ls.vehicle.moveToXY(EGO_ID, "", -1, fx, fy, sumo_angle_from_yaw(ego.yaw), keepRoute=2)
        ls.simulationStep()

    def _subscribe(self) -> None:
        tc = self.tc
        radius = self.traffic.scene_radius
        self.ls.vehicle.subscribeContext(
            EGO_ID,
            tc.CMD_GET_VEHICLE_VARIABLE,
            radius,
            [
                tc.VAR_POSITION,
                tc.VAR_ANGLE,
                tc.VAR_SPEED,
                tc.VAR_LENGTH,
                tc.VAR_WIDTH,
                tc.VAR_HEIGHT,
                tc.VAR_ACCELERATION,
                tc.VAR_VEHICLECLASS,
            ],
        )
        self.ls.vehicle.subscribeContext(
            EGO_ID, tc.CMD_GET_PERSON_VARIABLE, radius, [tc.VAR_POSITION, tc.VAR_ANGLE, tc.VAR_SPEED]
        )
        for tls in self._tls_ids:
            self.ls.trafficlight.subscribe(tls, [tc.TL_RED_YELLOW_GREEN_STATE])
        self.ls.simulationStep()

    def _fill_traffic(self, initial: bool = False) -> None:
        ls = self.ls
        cfg = self.traffic
        have = sum(1 for v in ls.vehicle.getIDList() if v.startswith("bg"))
        have += len(ls.simulation.getPendingVehicles())
        tries = 0
        while have < cfg.vehicles and tries < 4 * cfg.vehicles:
            tries += 1
            a = self._spawn_edges[self._rng.integers(len(self._spawn_edges))]
            b = self._edge_lanes[self._rng.integers(len(self._edge_lanes))]
            r = ls.simulation.findRoute(a, b)
            if len(r.edges) < 2:
                continue
            self._counter += 1
            vid = f"bg{self._counter}"
            ls.route.add(f"r_{vid}", r.edges)
            ls.vehicle.add(
                vid,
                f"r_{vid}",
                departPos="random_free" if initial else "base",
                departSpeed="desired",
                departLane="best",
            )
            have += 1
        if not self._spawn_walk:
            return
        have_p = sum(1 for p in ls.person.getIDList() if p.startswith("ped"))
        tries = 0
        while have_p < cfg.pedestrians and tries < 4 * cfg.pedestrians:
            tries += 1
            a = self._spawn_walk[self._rng.integers(len(self._spawn_walk))]
            b = self._spawn_walk[self._rng.integers(len(self._spawn_walk))]
            if a == b:
                continue
            stages = ls.simulation.findIntermodalRoute(a, b, modes="")
            if not stages or not stages[0].edges:
                continue
            self._counter += 1
            pid = f"ped{self._counter}"
            try:
                ls.person.add(pid, a, pos=float(self._rng.uniform(0, 5)))
                ls.person.appendWalkingStage(pid, list(stages[0].edges), arrivalPos=1.0)
            except ls.TraCIException:
                continue
            have_p += 1

    def _maintain_traffic(self, ego: EgoState) -> None:
        ls = self.ls
        r2 = self.traffic.despawn_radius**2
        for vid in ls.vehicle.getIDList():
            if not vid.startswith("bg"):
                continue
            x, y = ls.vehicle.getPosition(vid)
            if (x - ego.x) ** 2 + (y - ego.y) ** 2 > r2:
                ls.vehicle.remove(vid)
        self._fill_traffic()

    def _static_stop_signs(self) -> StopSigns:
        lanes = self.lanes
        if not len(lanes.stop_lanes):
            return StopSigns()
        pos, line = lanes.stop_lines(lanes.stop_lanes)
        return StopSigns(position=pos, stop_line=line, lane=np.asarray(lanes.stop_lanes, np.int32))

    def _static_light_geometry(self) -> tuple[np.ndarray, np.ndarray]:
        if not len(self.lanes.tl_from_lane):
            return np.zeros((0, 2)), np.zeros((0, 2, 2))
        return self.lanes.stop_lines(self.lanes.tl_from_lane)
