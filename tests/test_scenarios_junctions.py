"""Right-of-way junction scenarios (envs/scenarios/junctions.py): T_Junction, the Vanilla* turns, the
vehicles running a red light / taking priority, and the blocked intersection.

Procedural tests drive routes on the urban_grid (no shared data): along row 1 (y = 150) from W1 east,
J1_0 is a priority-stop junction (east-west has priority, north-south streets stop), J1_1 is signalised,
J1_2 priority-stop again; J2_1 (north of J1_1) is an all-way stop. Shared-data tests run the Bench2Drive
routes that carry these types.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import B2D, SHARED_DATA, drive, ego_s, route_projection, shared_data

from envs.route_graph import Piece, build_route, join_pieces, route_graph
from envs.routes import ScenarioSpec
from envs.scenarios.base import SCENARIOS, ScenarioError, load_library
from envs.scenarios.junctions import (
    BlockedIntersection,
    OppositeVehicleRunningRedLight,
    OppositeVehicleTakingPriority,
    T_Junction,
    VanillaNonSignalizedTurn,
    VanillaNonSignalizedTurnEncounterStopsign,
    VanillaSignalizedTurnEncounterGreenLight,
    VanillaSignalizedTurnEncounterRedLight,
    junction_ahead,
    signal_rows,
)
from envs.scenarios.placement import junction_approaches, junction_passes
from envs.scene import AgentKind, LightState, Route
from policies.base import make_agent

NO_TRAFFIC = {"vehicles": 0, "pedestrians": 0}
FEW = {"vehicles": 3, "pedestrians": 0}
EAST = ["W1toJ1_0", "J1_0toJ1_1", "J1_1toJ1_2", "J1_2toJ1_3"]  # straight through J1_0, J1_1, J1_2
LEFT_TURN = ["W1toJ1_0", "J1_0toJ1_1", "J1_1toJ2_1", "J2_1toJ2_2"]  # left at J1_1 (lights), right at J2_1
TYPES = (
    T_Junction,
    VanillaNonSignalizedTurn,
    VanillaSignalizedTurnEncounterGreenLight,
    VanillaSignalizedTurnEncounterRedLight,
    VanillaNonSignalizedTurnEncounterStopsign,
    OppositeVehicleRunningRedLight,
    OppositeVehicleTakingPriority,
    BlockedIntersection,
)


def town_present(name: str) -> bool:
    return B2D.is_file() and (SHARED_DATA / "carla" / "maps" / f"{name}.xodr").is_file()


def town(name: str):
    """Marks a test that needs the Bench2Drive routes and ../shared/data/carla/maps/<name>.xodr."""

    def mark(test):
        skip = pytest.mark.skipif(not town_present(name), reason=f"../shared/data ({name}.xodr) not present")
        return pytest.mark.shared_data(skip(test))

    return mark


def grid_route(lanes, edges: list[str], start: float = 0.0, route_id: str = "grid") -> Route:
    """The route along `edges` (driving lane of each), from `start` metres on the first one."""
    graph = route_graph(lanes)
    ids = [next(i for i in range(len(lanes)) if lanes.edge_of_lane[i] == e and lanes.drivable[i])
           for e in edges]
    parts = [graph.search((a, 0.0), [(b, 0.0)])[0][1] for a, b in itertools.pairwise(ids)]
    parts.append([Piece(ids[-1], 0.0, float(graph.length[ids[-1]]))])
    pieces = join_pieces(parts, graph)
    pieces[0] = Piece(pieces[0].lane, start, pieces[0].s1)
    return build_route(graph, pieces, route_id)


def spec_at(env, route: Route, type_name: str, s: float, **params: str) -> ScenarioSpec:
    """A scenario of `type_name` whose trigger point is the route point at distance s."""
    k = int(np.clip(np.searchsorted(route.cum_length, s), 0, len(route.points) - 1))
    x, y = env.lanes.world_to_carla(route.points[k])
    return ScenarioSpec(f"{type_name}_1", type_name, (float(x), float(y), 0.0, 0.0),
                        {key: {"value": v} for key, v in params.items()})


def start(env, edges: list[str], type_name: str, s: float, route_start: float = 0.0, seed: int = 0,
          **params: str):
    route = grid_route(env.lanes, edges, route_start)
    env.reset(seed=seed, options={"route": route, "scenarios": [spec_at(env, route, type_name, s, **params)]})
    (sc,) = env.scenarios
    assert sc.type_name == type_name
    return sc


def passes(env, edges: list[str]) -> dict:
    return {jp.junction: jp for jp in junction_passes(grid_route(env.lanes, edges), env.lanes)}


def vehicle_lane(env, vid: str) -> int:
    if vid not in env.backend.vehicle_ids():
        return -1
    return env.lanes.index.get(env.backend.ls.vehicle.getLaneID(vid), -1)


# ------------------------------------------------------------------------------ registration
def test_types_registered_with_bench2drive_defaults():
    load_library()
    for cls in TYPES:
        assert SCENARIOS[cls.type_name] is cls
        assert cls.differs_from_carla and "\n" not in cls.differs_from_carla
    assert OppositeVehicleRunningRedLight.defaults == {"direction": "right"}
    assert OppositeVehicleTakingPriority.defaults == {"direction": "right"}
    assert T_Junction.defaults == {"timeout": "240"} and BlockedIntersection.defaults == {"timeout": "240"}
    assert VanillaNonSignalizedTurn.defaults == {}
    rng = np.random.default_rng(0)
    dirs = {OppositeVehicleRunningRedLight.sample_params(rng)["direction"]["value"] for _ in range(40)}
    assert dirs == {"left", "right"}


# ------------------------------------------------------------------------------ sampler hooks
def test_candidate_triggers_fit_each_junction(make_env):
    env = make_env(traffic=NO_TRAFFIC)
    lanes = env.lanes
    east = grid_route(lanes, EAST)
    turn = grid_route(lanes, LEFT_TURN)
    pe = {jp.junction: jp for jp in junction_passes(east, lanes)}
    pt = {jp.junction: jp for jp in junction_passes(turn, lanes)}

    def window(jp):
        return np.arange(jp.entry_s - 40.0, jp.entry_s - 10.0 + 1e-6, 5.0)

    def same(a, b):
        return len(a) == len(b) and np.allclose(np.sort(a), np.sort(b))

    # Straight east: the red-light runner only before the signalised J1_1, the priority taker before the
    # unsignalised J1_0 / J1_2 (both crossing roads have a straight path across the route).
    assert same(OppositeVehicleRunningRedLight.candidate_triggers(east, lanes), window(pe["J1_1"]))
    got = OppositeVehicleTakingPriority.candidate_triggers(east, lanes)
    assert same(got, np.concatenate([window(pe["J1_0"])[window(pe["J1_0"]) >= 5.0], window(pe["J1_2"])]))
    # Vanilla turns need a turn: none on the straight route.
    for cls in (VanillaNonSignalizedTurn, VanillaSignalizedTurnEncounterGreenLight,
                VanillaSignalizedTurnEncounterRedLight, VanillaNonSignalizedTurnEncounterStopsign):
        assert len(cls.candidate_triggers(east, lanes)) == 0, cls.type_name
    # Left at the lights of J1_1, right at the all-way stop J2_1.
    assert same(VanillaSignalizedTurnEncounterGreenLight.candidate_triggers(turn, lanes), window(pt["J1_1"]))
    assert same(VanillaSignalizedTurnEncounterRedLight.candidate_triggers(turn, lanes), window(pt["J1_1"]))
    assert same(VanillaNonSignalizedTurnEncounterStopsign.candidate_triggers(turn, lanes), window(pt["J2_1"]))
    assert len(VanillaNonSignalizedTurn.candidate_triggers(turn, lanes)) == 0
    # Every grid junction has four roads: no T junction.
    assert len(T_Junction.candidate_triggers(east, lanes)) == 0
    blocked = BlockedIntersection.candidate_triggers(turn, lanes)
    assert len(blocked) and all(junction_ahead(turn, lanes, float(s)) is not None for s in blocked)


def test_t_junction_candidates_on_rural_t(make_env):
    env = make_env(map="rural", traffic=NO_TRAFFIC)
    lanes = env.lanes
    route = grid_route(lanes, ["main_a", "side"], start=100.0)
    (jp,) = [p for p in junction_passes(route, lanes) if p.junction == "T"]
    cand = T_Junction.candidate_triggers(route, lanes)
    assert len(cand) and np.all((cand >= jp.entry_s - 40.0) & (cand <= jp.entry_s - 10.0))
    # The straight road through the T is never a T_Junction candidate on the grid, but is here.
    through = grid_route(lanes, ["main_a", "main_b"], start=100.0)
    assert len(T_Junction.candidate_triggers(through, lanes))


# ------------------------------------------------------------------------- red-light runner
def _start_opposite_vehicle(make_env, junction: str, type_name: str, direction: str):
    """(env, junction pass, scenario, the adversary's approach) with `type_name` triggered 30 m before
    `junction` on the EAST route."""
    env = make_env(traffic=FEW)
    jp = passes(env, EAST)[junction]
    sc = start(env, EAST, type_name, jp.entry_s - 30.0, direction=direction)
    (app,) = [a for a in junction_approaches(env.lanes, jp) if a.lane == sc.plan.approach]
    return env, jp, sc, app


def test_red_light_runner_crosses_on_red_while_ego_green(make_env):
    env, _jp, sc, app = _start_opposite_vehicle(make_env, "J1_1", "OppositeVehicleRunningRedLight", "right")
    lanes = env.lanes
    plan = sc.plan
    assert plan.crosses
    assert app.relation == "from_right"  # ego heads east: the runner comes from the south
    adv = sc.ADVERSARY
    in_junction: list[dict] = []
    seen_waiting: list[float] = []

    def on_step(env, reward, info):
        scene = env.scene
        if sc.phase == "waiting" and adv in env.backend.vehicle_ids():
            seen_waiting.append(env.backend.ls.vehicle.getSpeed(adv))
        if adv not in scene.agents.ids:
            return sc.phase == "gone"
        lane = vehicle_lane(env, adv)
        if lane >= 0 and lanes.is_internal[lane]:
            k = scene.agents.index(adv)
            rows = np.flatnonzero(scene.lights.via_lane == lane)
            in_junction.append({
                "own": scene.lights.state[rows].tolist(),
                "ego": scene.lights.state[sc.lights.ego_rows].tolist(),
                "xy": scene.agents.box[k, :2].copy(),
                "kind": int(scene.agents.kind[k]),
                "speed": float(scene.agents.speed[k]),
                "ego_to_conflict": plan.conflict_s - ego_s(env),
                "ego_speed": scene.ego.speed,
            })
        return False

    drive(env, make_agent("lane_follow"), 700, on_step=on_step)
    assert seen_waiting and max(seen_waiting) < 0.1  # it waited at its source until the ego came close
    assert in_junction, "the adversary never entered the junction"
    first = in_junction[0]
    own = [s for row in in_junction for s in row["own"]]
    assert own and all(s == LightState.RED for s in own)  # its own light was red all the way
    assert all(all(s == LightState.GREEN for s in row["ego"]) for row in in_junction)
    assert all(row["kind"] == AgentKind.EMERGENCY and row["speed"] > 15.0 for row in in_junction)
    # it arrived together with the ego: the ego was a few seconds from the conflict point
    assert 0.0 < first["ego_to_conflict"] < 4.0 * max(first["ego_speed"], 1.0)
    # its path crossed the route's way through the junction
    lateral = min(route_projection(env.route, row["xy"])[0] for row in in_junction)
    assert lateral < 1.5
    assert sc.phase == "gone" and adv not in env.backend.vehicle_ids()


def test_red_light_runner_releases_lights_after_junction(make_env):
    env = make_env(traffic=NO_TRAFFIC)
    jp = passes(env, EAST)["J1_1"]
    sc = start(env, EAST, "OppositeVehicleRunningRedLight", jp.entry_s - 30.0, direction="left")
    tls = sc.lights.tls
    ls = env.backend.ls

    def on_step(env, reward, info):
        return ego_s(env) > jp.exit_s + 5.0

    drive(env, make_agent("lane_follow"), 900, on_step=on_step)
    assert sc.phase == "gone" and sc.lights is None
    assert all(ls.trafficlight.getProgram(t) != "online" for t in tls)  # the lights run their program again


# ------------------------------------------------------------------------------ priority taker
def test_priority_taker_enters_from_the_side_when_ego_arrives(make_env):
    env, jp, sc, app = _start_opposite_vehicle(make_env, "J1_2", "OppositeVehicleTakingPriority", "left")
    lanes = env.lanes
    plan = sc.plan
    assert sc.lights is None and plan.crosses
    assert app.relation == "from_left"  # from the north
    assert plan.approach in set(lanes.stop_lanes.tolist())  # its road has to stop and give way
    adv = sc.ADVERSARY
    entered: list[tuple[float, float, np.ndarray]] = []

    def on_step(env, reward, info):
        if adv in env.backend.vehicle_ids():
            lane = vehicle_lane(env, adv)
            if lane >= 0 and lanes.is_internal[lane]:
                xy = np.asarray(env.backend.ls.vehicle.getPosition(adv))
                entered.append((env.backend.ls.vehicle.getSpeed(adv), jp.entry_s - ego_s(env), xy))
        return sc.phase == "gone"

    drive(env, make_agent("lane_follow"), 900, on_step=on_step)
    assert entered, "the adversary never entered the junction"
    speed, ego_gap, _ = entered[0]
    assert speed > 15.0  # it did not stop at its stop line
    assert -5.0 < ego_gap < 30.0  # the ego was arriving at the junction
    assert min(route_projection(env.route, xy)[0] for _, _, xy in entered) < 2.5


# --------------------------------------------------------------------------- blocked junction
def test_blocked_intersection_blocker_stops_lane_follow(make_env):
    env = make_env(traffic=FEW)
    jp = passes(env, LEFT_TURN)["J1_1"]
    sc = start(env, LEFT_TURN, "BlockedIntersection", jp.entry_s - 25.0)
    blocker = sc.BLOCKER
    stopped_ticks: list[float] = []
    seen: list[tuple[float, float, float, int]] = []

    def on_step(env, reward, info):
        scene = env.scene
        if blocker in scene.agents.ids:
            k = scene.agents.index(blocker)
            lateral, s = route_projection(env.route, scene.agents.box[k, :2])
            seen.append((lateral, s, float(scene.agents.speed[k]), int(scene.agents.kind[k])))
            if scene.ego.speed < 0.05:
                stopped_ticks.append(ego_s(env))
        return sc.phase == "gone" and ego_s(env) > jp.exit_s + 20.0

    drive(env, make_agent("lane_follow"), 1400, on_step=on_step)
    assert seen, "no blocker appeared"
    assert all(lat < 0.5 and sp == 0.0 and kind == AgentKind.VEHICLE for lat, _, sp, kind in seen)
    blocker_s = seen[0][1]
    assert jp.exit_s < blocker_s < jp.exit_s + 10.0  # right after the junction, on the route
    # the ego stood behind it (front bumper short of the blocker's rear) for a good while
    assert len(stopped_ticks) * 0.05 > 5.0
    assert max(stopped_ticks) + 2.45 < blocker_s - 2.5
    # then the blocker left and the ego got through, in time
    assert sc.phase == "gone" and ego_s(env) > jp.exit_s + 20.0
    assert env.record()["infractions"]["scenario_timeouts"] == []
    assert any("managed" in n for n in sc.status.notes)


def test_blocked_intersection_short_timeout_reports_once(make_env):
    env = make_env(traffic=NO_TRAFFIC)
    jp = passes(env, LEFT_TURN)["J1_1"]
    sc = start(env, LEFT_TURN, "BlockedIntersection", jp.entry_s - 25.0, timeout="6")
    # the blocker leaves 10 s after the ego came close: 6 s after the trigger it is still there
    drive(env, make_agent("lane_follow"), 1000, on_step=lambda env, r, i: sc.phase == "gone")
    timeouts = env.record()["infractions"]["scenario_timeouts"]
    assert len(timeouts) == 1 and "BlockedIntersection_1" in timeouts[0]
    assert sc.phase == "gone" and sc.seconds_since_trigger(env.scene) > 10.0


# ------------------------------------------------------------------------------ light freezes
def _link_states(env, sc) -> tuple[list[int], list[int]]:
    lights = env.scene.lights
    rows = signal_rows(env.lanes, sc.jp)
    others = [int(k) for k in rows if int(k) not in set(sc.lights.ego_rows.tolist())]
    return lights.state[sc.lights.ego_rows].tolist(), lights.state[others].tolist()


@pytest.mark.parametrize(
    ("type_name", "first", "second"),
    [
        ("VanillaSignalizedTurnEncounterGreenLight", LightState.GREEN, LightState.RED),
        ("VanillaSignalizedTurnEncounterRedLight", LightState.RED, LightState.GREEN),
    ],
)
def test_vanilla_signalized_light_stages_hold(make_env, type_name, first, second):
    env = make_env(traffic=NO_TRAFFIC)
    # The route starts 15 m before J1_1, where the trigger is: the ego stands still with the brake on.
    sc = start(env, LEFT_TURN[1:], type_name, 0.0, route_start=60.0)
    assert sc.jp.junction == "J1_1" and sc.jp.turn == "left"
    tls = sc.lights.tls
    ls = env.backend.ls
    states: list[tuple[float, list[int], list[int]]] = []
    for _ in range(int(16.0 / 0.05)):
        env.step(np.array([0.0, 1.0, 0.0]))
        t = sc.seconds_since_trigger(env.scene)
        ego, others = _link_states(env, sc)
        states.append((t, ego, others))
    assert sc.status.triggered and sc.status.trigger_tick <= 1
    assert len(sc.lights.ego_rows) == 3  # right, straight and left from the ego's road

    def during(lo, hi):
        return [(e, o) for t, e, o in states if lo <= t < hi]

    assert during(0.2, 4.9)
    assert all(set(e) == {first} and set(o) == {LightState.RED} for e, o in during(0.2, 4.9))
    assert all(set(e) == {second} and set(o) == {LightState.RED} for e, o in during(5.2, 9.9))
    if second == LightState.RED:  # green variant: the program resumes after 10 s
        assert all(ls.trafficlight.getProgram(t) != "online" for t in tls)
    else:  # red variant: the ego's green holds until it is past the junction
        assert all(set(e) == {LightState.GREEN} for e, _ in during(10.0, 16.0))
        assert all(ls.trafficlight.getProgram(t) == "online" for t in tls)


def test_vanilla_red_light_lane_follow_waits_then_turns(make_env):
    env = make_env(traffic=NO_TRAFFIC)
    jp = passes(env, LEFT_TURN)["J1_1"]
    sc = start(env, LEFT_TURN, "VanillaSignalizedTurnEncounterRedLight", jp.entry_s - 20.0)
    at_green: list[float] = []

    def on_step(env, reward, info):
        if sc.status.triggered and not at_green and sc.seconds_since_trigger(env.scene) >= 4.9:
            at_green.append(ego_s(env))
        return sc.done

    drive(env, make_agent("lane_follow"), 900, on_step=on_step)
    assert at_green and at_green[0] < jp.entry_s  # held at the red light
    assert sc.done and env.record()["infractions"]["red_light"] == []
    tls = sc.lights.tls
    assert all(env.backend.ls.trafficlight.getProgram(t) != "online" for t in tls)


@pytest.mark.parametrize(
    ("type_name", "junction"),
    [("VanillaNonSignalizedTurn", "J1_0"), ("VanillaNonSignalizedTurnEncounterStopsign", "J2_1")],
)
def test_vanilla_unsignalised_turn_ends_past_junction(make_env, type_name, junction):
    env = make_env(traffic=NO_TRAFFIC)
    edges = ["W1toJ1_0", "J1_0toJ0_0", "J0_0toS0"] if junction == "J1_0" else LEFT_TURN
    jp = passes(env, edges)[junction]
    sc = start(env, edges, type_name, jp.entry_s - 20.0)
    assert sc.jp.junction == junction and sc.jp.turn == "right"
    drive(env, make_agent("lane_follow"), 1200, on_step=lambda env, r, i: sc.done)
    assert sc.done and ego_s(env) >= jp.exit_s + 10.0
    assert any(junction in n for n in sc.status.notes)
    rec = env.record()["infractions"]
    assert rec["scenario_timeouts"] == [] and rec["stop_infraction"] == []


# ---------------------------------------------------------------------------------- T_Junction
def test_t_junction_reports_timeout_when_ego_stands(make_env):
    env = make_env(traffic=NO_TRAFFIC)
    sc = start(env, EAST[1:], "T_Junction", 0.0, route_start=40.0, timeout="3")
    for _ in range(int(6.0 / 0.05)):
        env.step(np.array([0.0, 1.0, 0.0]))
    timeouts = env.record()["infractions"]["scenario_timeouts"]
    assert len(timeouts) == 1 and "T_Junction_1" in timeouts[0]
    assert sc.status.triggered


def test_t_junction_driving_ego_passes(make_env):
    env = make_env(traffic=NO_TRAFFIC)
    sc = start(env, EAST[1:], "T_Junction", 10.0, route_start=40.0, timeout="60")
    assert sc.goal_s == pytest.approx(min(sc.trigger_s + 200.0, 0.98 * env.route.length))
    drive(env, make_agent("lane_follow"), 1200)
    assert env.record()["infractions"]["scenario_timeouts"] == []
    assert any("managed" in n for n in sc.status.notes)


# ------------------------------------------------------------------------------- bad placement
def test_placement_errors_are_clear(make_env):
    env = make_env(traffic=NO_TRAFFIC)
    east = passes(env, EAST)
    with pytest.raises(ScenarioError, match="traffic light"):  # J1_0 has no lights
        start(env, EAST, "VanillaSignalizedTurnEncounterGreenLight", east["J1_0"].entry_s - 20.0)
    with pytest.raises(ScenarioError, match="direction"):
        start(env, EAST, "OppositeVehicleTakingPriority", east["J1_0"].entry_s - 20.0, direction="behind")
    with pytest.raises(ScenarioError, match="needs a junction"):  # after the last junction
        start(env, EAST, "BlockedIntersection", east["J1_2"].exit_s + 10.0)
    with pytest.raises(ScenarioError, match="unknown parameter"):
        start(env, EAST, "T_Junction", 20.0, distance="3")


# ------------------------------------------------------------------------ Bench2Drive routes
def b2d_env(make_env, town_name: str, route_id: str, traffic=FEW):
    env = make_env(map=str(SHARED_DATA / "carla" / "maps" / f"{town_name}.xodr"), routes=str(B2D),
                   route_ids=[route_id], traffic=traffic)
    env.reset(seed=0, options={"route_id": route_id})
    return env


@town("Town03")
def test_b2d_red_light_runner_town03(make_env):
    env = b2d_env(make_env, "Town03", "26950")
    (sc,) = env.scenarios
    assert sc.type_name == "OppositeVehicleRunningRedLight" and sc.param("direction") == "right"
    assert sc.lights is not None and len(sc.lights.ego_rows)
    lanes = env.lanes
    adv = sc.ADVERSARY
    rows: list[tuple[list[int], list[int], np.ndarray]] = []

    def on_step(env, reward, info):
        if adv in env.backend.vehicle_ids():
            lane = vehicle_lane(env, adv)
            if lane >= 0 and lanes.is_internal[lane]:
                lights = env.scene.lights
                own = lights.state[np.flatnonzero(lights.via_lane == lane)].tolist()
                xy = np.asarray(env.backend.ls.vehicle.getPosition(adv))
                rows.append((own, lights.state[sc.lights.ego_rows].tolist(), xy))
        return sc.phase == "gone"

    drive(env, make_agent("lane_follow"), 800, on_step=on_step)
    assert rows, "the adversary never entered the junction"
    assert all(set(own) <= {LightState.RED} for own, _, _ in rows) and any(own for own, _, _ in rows)
    assert all(set(ego) == {LightState.GREEN} for _, ego, _ in rows)
    # The ego turns right there: the runner's straight path passes just in front of it (next lane).
    assert min(route_projection(env.route, xy)[0] for _, _, xy in rows) < 4.5


@shared_data
def test_b2d_opposite_vehicle_town04_crosses_route(make_env):
    env = b2d_env(make_env, "Town04", "26944")
    (sc,) = env.scenarios
    assert sc.type_name == "OppositeVehicleRunningRedLight"
    assert sc.plan.crosses
    assert sc.lights is None and any("no traffic light" in n for n in sc.status.notes)  # none in SUMO's net
    adv = sc.ADVERSARY
    near: list[float] = []

    def on_step(env, reward, info):
        if adv in env.scene.agents.ids:
            k = env.scene.agents.index(adv)
            near.append(route_projection(env.route, env.scene.agents.box[k, :2])[0])
        return sc.phase == "gone"

    drive(env, make_agent("lane_follow"), 600, on_step=on_step)
    assert sc.phase == "gone" and near and min(near) < 1.5


@shared_data
def test_b2d_blocked_intersection(make_env):
    env = b2d_env(make_env, "Town04", "27494")
    (sc,) = env.scenarios
    assert sc.type_name == "BlockedIntersection" and sc.jp.turn == "left"
    blocker_s: list[float] = []
    stopped: list[float] = []

    def on_step(env, reward, info):
        scene = env.scene
        if sc.BLOCKER in scene.agents.ids:
            k = scene.agents.index(sc.BLOCKER)
            lateral, s = route_projection(env.route, scene.agents.box[k, :2])
            assert lateral < 0.5 and scene.agents.speed[k] == 0.0
            blocker_s.append(s)
            if scene.ego.speed < 0.05 and ego_s(env) > sc.jp.entry_s:
                stopped.append(ego_s(env))
        return sc.phase == "gone"

    drive(env, make_agent("lane_follow"), 1600, on_step=on_step)
    assert blocker_s and sc.jp.exit_s < blocker_s[0] < sc.jp.exit_s + 10.0
    assert stopped and max(stopped) + 2.45 < blocker_s[0] - 2.0  # stopped behind it, in the junction
    assert sc.phase == "gone" and env.record()["infractions"]["scenario_timeouts"] == []


@pytest.mark.shared_data
@pytest.mark.parametrize(("town_name", "route_id"), [("Town01", "28035"), ("Town02", "28048"),
                                                      ("Town04", "28111")])
def test_b2d_t_junction_routes(make_env, town_name, route_id):
    if not town_present(town_name):
        pytest.skip(f"../shared/data ({town_name}.xodr) not present")
    env = b2d_env(make_env, town_name, route_id, traffic=NO_TRAFFIC)
    (sc,) = env.scenarios
    assert sc.type_name == "T_Junction"
    jp = junction_ahead(env.route, env.lanes, sc.trigger_s)
    assert jp is not None
    assert len({env.lanes.edge_of_lane[a.lane] for a in junction_approaches(env.lanes, jp)}) == 3
    terminated, _, _, _ = drive(env, make_agent("lane_follow"), 1500)
    assert terminated and env.record()["infractions"]["scenario_timeouts"] == []
    assert any("managed" in n for n in sc.status.notes)
