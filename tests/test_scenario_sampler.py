"""Training-route scenario sampler (envs.scenarios.sampler): placement, route files, disjointness from the
evaluation routes; and the ability scores of `envs.infractions.summarize`."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from helpers import B2D, NO_CAMERA, SHARED_DATA, SMALL_TRAFFIC, TOWN04, route_projection, shared_data

from envs.infractions import ability_scores, first_junction_completion, summarize, traffic_signs_success
from envs.maps.build import resolve_map
from envs.maps.network import load_lane_graph
from envs.routes import ScenarioSpec, map_route, parse_routes, random_route
from envs.scenarios.base import SCENARIOS, load_library
from envs.scenarios.placement import junction_passes
from envs.scenarios.sampler import (
    EvalSet,
    RouteOverlapError,
    SampledRoute,
    SamplerError,
    candidates_for,
    check_eval_triggers,
    implemented_types,
    load_eval_set,
    route_overlap,
    sample_scenarios,
    trigger_of,
    write_routes_xml,
)

BASE_TYPES = ["ParkedObstacle", "PedestrianCrossing", "HardBreakRoute"]  # present from the start
TRAINING = SHARED_DATA / "routes" / "leaderboard1_training_town01-05.xml"


@pytest.fixture(scope="module")
def grid():
    return load_lane_graph(resolve_map("urban_grid"))


@pytest.fixture(scope="module")
def grid_routes(grid):
    return [random_route(grid, np.random.default_rng(k), 500.0, 900.0, town="urban_grid") for k in range(5)]


def _key(sampled: list[SampledRoute]) -> list:
    return [[(s.name, s.type, s.trigger_point, s.params) for s in sr.scenarios] for sr in sampled]


def _trigger_s(route, lanes, spec: ScenarioSpec) -> tuple[float, float]:
    return route_projection(route, lanes.carla_to_world(np.array(spec.trigger_point[:2])))


def test_sampler_is_deterministic_in_seed(grid, grid_routes):
    a = sample_scenarios(grid, grid_routes, BASE_TYPES, density=4.0, seed=7)
    b = sample_scenarios(grid, grid_routes, BASE_TYPES, density=4.0, seed=7)
    c = sample_scenarios(grid, grid_routes, BASE_TYPES, density=4.0, seed=8)
    assert sum(len(sr.scenarios) for sr in a) > 0
    assert _key(a) == _key(b)
    assert _key(a) != _key(c)
    # names are <Type>_<k>, counted per type within a route, in route order
    for sr in a:
        seen: dict[str, int] = {}
        for spec in sr.scenarios:
            seen[spec.type] = seen.get(spec.type, 0) + 1
            assert spec.name == f"{spec.type}_{seen[spec.type]}"


def test_default_types_are_the_registry(grid, grid_routes):
    load_library()
    assert set(implemented_types()) == set(SCENARIOS)
    assert set(BASE_TYPES) <= set(implemented_types())
    sampled = sample_scenarios(grid, grid_routes, density=6.0, seed=0)  # every implemented type
    assert {s.type for sr in sampled for s in sr.scenarios} <= set(SCENARIOS)
    with pytest.raises(SamplerError, match="NoSuchType"):
        sample_scenarios(grid, grid_routes, ["NoSuchType"])
    with pytest.raises(SamplerError, match="density"):
        sample_scenarios(grid, grid_routes, BASE_TYPES, density=-1.0)


def test_density_scales_the_number_of_instances(grid, grid_routes):
    km = sum(r.length for r in grid_routes) / 1000.0
    counts = {}
    for d in (0.0, 1.0, 5.0):
        sampled = sample_scenarios(grid, grid_routes, BASE_TYPES, density=d, seed=3, max_per_type=None)
        counts[d] = sum(len(sr.scenarios) for sr in sampled)
        # stochastic rounding per route: within one instance per route of density x km
        assert abs(counts[d] - d * km) <= len(grid_routes), (d, counts[d], km)
    assert counts[0.0] == 0
    assert counts[5.0] >= 3 * max(counts[1.0], 1)
    # the default keeps one instance per type and route (variety over repeats)
    capped = sample_scenarios(grid, grid_routes, BASE_TYPES, density=20.0, seed=3)
    for sr in capped:
        types = [s.type for s in sr.scenarios]
        assert len(types) == len(set(types))
    assert sum(len(sr.scenarios) for sr in capped) < sum(
        len(sr.scenarios) for sr in sample_scenarios(grid, grid_routes, BASE_TYPES, density=20.0, seed=3,
                                                     max_per_type=None))


def test_instances_keep_the_minimum_gap(grid, grid_routes):
    gap = 80.0
    sampled = sample_scenarios(grid, grid_routes, BASE_TYPES, density=50.0, seed=1, min_gap=gap,
                               max_per_type=None)
    km = sum(r.length for r in grid_routes) / 1000.0
    total = sum(len(sr.scenarios) for sr in sampled)
    assert len(grid_routes) < total < 50 * km  # capped by the spacing, yet several per route
    for sr in sampled:
        s = sorted(_trigger_s(sr.route, grid, spec)[1] for spec in sr.scenarios)
        assert np.all(np.diff(s) >= gap - 0.2), s


def test_triggers_lie_on_the_route_at_candidate_points(grid, grid_routes):
    sampled = sample_scenarios(grid, grid_routes, BASE_TYPES, density=6.0, seed=2, max_per_type=None)
    n = 0
    for sr in sampled:
        for spec in sr.scenarios:
            lateral, s = _trigger_s(sr.route, grid, spec)
            assert lateral < 0.05
            cands = candidates_for(SCENARIOS[spec.type], sr.route, grid)
            assert np.min(np.abs(cands - s)) < 0.2, (spec.name, s)
            # the trigger yaw is the route's heading there (CARLA degrees, y mirrored)
            idx = int(np.searchsorted(sr.route.cum_length, s))
            dyaw = math.radians(spec.trigger_point[3]) + sr.route.yaw[idx]
            assert abs(math.atan2(math.sin(dyaw), math.cos(dyaw))) < 0.05
            n += 1
    assert n > 0


def test_route_file_round_trips_and_drives(grid, grid_routes, tmp_path, make_env):
    sampled = sample_scenarios(grid, grid_routes[:3], BASE_TYPES, density=4.0, seed=5)
    path = write_routes_xml(tmp_path / "train.xml", sampled, grid)
    specs = parse_routes(path)
    assert [s.route_id for s in specs] == [sr.route_id for sr in sampled]
    for spec, sr in zip(specs, sampled, strict=True):
        assert spec.town == "urban_grid"
        assert [(s.name, s.type, s.params) for s in spec.scenarios] == [
            (s.name, s.type, s.params) for s in sr.scenarios
        ]
        for got, want in zip(spec.scenarios, sr.scenarios, strict=True):
            assert np.allclose(got.trigger_point, want.trigger_point, atol=0.01)
        again = map_route(spec, grid)
        assert again.length == pytest.approx(sr.route.length, abs=1.5)  # see TRIM_INTERNAL
        d = np.hypot(*(again.points[::10, None, :] - sr.route.points[None, ::10, :]).transpose(2, 0, 1))
        assert d.min(axis=1).max() < 0.5  # the same path, point for point
        assert len(spec.waypoints) < sr.route.length / 5  # sparse
    rid = max(sampled, key=lambda sr: len(sr.scenarios)).route_id
    env = make_env(routes=str(path), route_ids=[rid], traffic=SMALL_TRAFFIC, camera=NO_CAMERA)
    env.reset(seed=0, options={"route_id": rid})
    want = next(sr for sr in sampled if sr.route_id == rid)
    assert [sc.type_name for sc in env.scenarios] == [s.type for s in want.scenarios]
    for sc, spec in zip(env.scenarios, want.scenarios, strict=True):
        assert sc.trigger_s == pytest.approx(_trigger_s(want.route, grid, spec)[1], abs=0.2)
    for _ in range(10):
        env.step(np.array([0.5, 0.0, 0.0]))
    assert env.scene.tick == 10


@pytest.mark.parametrize("map_name", ["highway", "rural"])
def test_sampling_on_other_procedural_maps(map_name, tmp_path):
    lanes = load_lane_graph(resolve_map(map_name))
    routes = [random_route(lanes, np.random.default_rng(k), 500.0, 900.0, town=map_name) for k in range(3)]
    sampled = sample_scenarios(lanes, routes, density=4.0, seed=0)  # every implemented type
    for sr in sampled:
        for spec in sr.scenarios:
            lateral, s = _trigger_s(sr.route, lanes, spec)
            assert lateral < 0.05
            assert np.min(np.abs(candidates_for(SCENARIOS[spec.type], sr.route, lanes) - s)) < 0.2
    specs = parse_routes(write_routes_xml(tmp_path / "r.xml", sampled, lanes))
    for spec, sr in zip(specs, sampled, strict=True):
        # map_route drops a last junction-lane stretch under 1 m (TRIM_INTERNAL) that random routes keep
        assert map_route(spec, lanes).length == pytest.approx(sr.route.length, abs=1.5)
        assert [s.name for s in spec.scenarios] == [s.name for s in sr.scenarios]


def test_route_overlap_measures_shared_aligned_length(grid, grid_routes):
    r = grid_routes[0]
    assert route_overlap(r, [r]) == pytest.approx(1.0)
    half = r.cum_length <= r.length / 2
    first_half = dataclasses.replace(r, route_id="half", points=r.points[half], yaw=r.yaw[half],
                                     cum_length=r.cum_length[half])
    assert route_overlap(r, [first_half]) == pytest.approx(0.5, abs=0.03)
    # the same road driven the other way does not count (heading)
    back = dataclasses.replace(r, route_id="back", points=r.points[::-1].copy(), yaw=r.yaw[::-1] + math.pi)
    assert route_overlap(r, [back]) == 0.0
    assert route_overlap(r, []) == 0.0


def _eval_set_at(route, lanes, typ: str, s: float) -> EvalSet:
    idx = int(np.searchsorted(route.cum_length, s))
    return EvalSet(source="synthetic", routes=[], triggers=[(typ, "ev1", route.points[idx].copy())])


def test_sampler_keeps_away_from_evaluation_triggers(grid, grid_routes):
    r = grid_routes[1]
    typ = "HardBreakRoute"
    cands = candidates_for(SCENARIOS[typ], r, grid)
    s_eval = float(cands[len(cands) // 2])
    ev = _eval_set_at(r, grid, typ, s_eval)
    kept = candidates_for(SCENARIOS[typ], r, grid, eval_set=ev)
    assert len(kept) < len(cands)
    for s in kept:
        idx = int(np.searchsorted(r.cum_length, s))
        assert np.hypot(*(r.points[idx] - ev.triggers[0][2])) >= 30.0
    for seed in range(4):
        sampled = sample_scenarios(grid, [r], [typ], density=8.0, seed=seed, eval_set=ev, max_per_type=None)
        for spec in sampled[0].scenarios:
            xy = grid.carla_to_world(np.array(spec.trigger_point[:2]))
            assert np.hypot(*(xy - ev.triggers[0][2])) >= 30.0
    # a trigger of that type at the evaluation trigger is refused by the check, naming both
    bad = SampledRoute(r, [ScenarioSpec(f"{typ}_1", typ, trigger_of(r, grid, s_eval))])
    with pytest.raises(RouteOverlapError, match=f"{r.route_id}/{typ}_1.*evaluation route ev1"):
        check_eval_triggers([bad], ev, grid)
    other = SampledRoute(r, [ScenarioSpec("ParkedObstacle_1", "ParkedObstacle", trigger_of(r, grid, s_eval))])
    check_eval_triggers([other], ev, grid)  # another type may sit there


@shared_data
def test_sampler_refuses_training_routes_on_evaluation_routes():
    lanes = load_lane_graph(resolve_map(str(TOWN04)))
    ev = load_eval_set(B2D, lanes, "Town04")
    assert ev.routes and not ev.skipped
    dup_spec = next(s for s in parse_routes(B2D) if s.town == "Town04")
    dup = dataclasses.replace(map_route(dup_spec, lanes), route_id="copy_of_eval")
    with pytest.raises(RouteOverlapError, match=f"copy_of_eval.*{dup_spec.route_id}"):
        sample_scenarios(lanes, [dup], BASE_TYPES, eval_set=ev)
    # a training route of the Leaderboard 1.0 set that shares little with them is accepted
    if not TRAINING.is_file():
        pytest.skip("no Leaderboard 1.0 training routes")
    train = [s for s in parse_routes(TRAINING) if s.town == "Town04" and s.route_id == "33"]
    route = map_route(train[0], lanes)
    assert route_overlap(route, ev.routes) < 0.5
    sampled = sample_scenarios(lanes, [route], BASE_TYPES, density=3.0, seed=0, eval_set=ev)
    assert sampled[0].scenarios
    # stricter threshold: the overlap check names the route
    if route_overlap(route, ev.routes) > 0.0:
        with pytest.raises(RouteOverlapError, match="33"):
            sample_scenarios(lanes, [route], BASE_TYPES, eval_set=ev, overlap_threshold=0.0)


def test_first_junction_completion_on_a_grid_route(grid, grid_routes):
    r = next(r for r in grid_routes if junction_passes(r, grid))
    jc = first_junction_completion(r, grid)
    assert jc is not None
    first = junction_passes(r, grid)[0]
    assert jc >= 100.0 * first.entry_s / r.length


def _rec(status: str, types: list[str], completion: float = 100.0, junction: float | None = None,
         **infractions: list[str]) -> dict:
    return {
        "status": status,
        "scores": {"score_route": completion, "score_penalty": 1.0, "score_composed": completion},
        "infractions": {"red_light": [], "stop_infraction": [], "collisions_vehicle": [], **infractions},
        "meta": {"route_length": 100.0, "junction_completion": junction},
        "scenarios": [{"type": t, "implemented": True} for t in types],
    }


def test_summarize_adds_ability_scores():
    records = [
        _rec("Completed", ["ParkedObstacle"]),  # Overtaking success
        _rec("Failed - Agent got blocked", ["ParkedObstacle"], completion=40.0),  # Overtaking failure
        _rec("Completed", ["HardBreakRoute"], collisions_vehicle=["hit"]),  # Emergency Brake failure
        # PedestrianCrossing: Emergency Brake + Traffic Signs. Got past the junction cleanly but then
        # failed: Emergency Brake fails, Traffic Signs succeeds.
        _rec("Failed - Agent got blocked", ["PedestrianCrossing"], completion=60.0, junction=30.0),
        # ran a red light: Traffic Signs fails although the route completed
        _rec("Completed", ["SignalizedJunctionLeftTurn"], junction=20.0, red_light=["red"]),
        # an unimplemented type does not count
        {**_rec("Completed", []), "scenarios": [{"type": "Accident", "implemented": False}]},
    ]
    s = summarize(records)
    ab = s["abilities"]
    assert ab["Overtaking"] == pytest.approx(50.0)
    assert ab["Emergency Brake"] == pytest.approx(0.0)  # HardBreakRoute collided, PedestrianCrossing blocked
    assert ab["Traffic Signs"] == pytest.approx(50.0)
    assert ab["Merging"] == pytest.approx(0.0)  # SignalizedJunctionLeftTurn: red light
    assert ab["Give Way"] is None
    assert ab["mean"] == pytest.approx(np.mean([50.0, 0.0, 50.0, 0.0]))
    assert s["ability_counts"]["Overtaking"] == [1, 2]
    assert s["scenario_success"]["ParkedObstacle"] == pytest.approx(50.0)
    assert s["scenario_counts"]["PedestrianCrossing"] == [0, 1]
    assert "Accident" not in s["scenario_counts"]
    # the existing keys are unchanged
    assert s["num_routes"] == 6 and s["num_success"] == 2
    # no scenario types: no ability keys
    plain = summarize([{k: v for k, v in records[0].items() if k != "scenarios"}])
    assert "abilities" not in plain
    assert ability_scores([]) == {}


def test_traffic_signs_rule():
    assert traffic_signs_success(_rec("Failed - Agent got blocked", [], completion=50.0, junction=40.0))
    assert not traffic_signs_success(_rec("Completed", [], completion=100.0, junction=40.0,
                                          stop_infraction=["stop"]))
    assert not traffic_signs_success(_rec("Failed - Agent got blocked", [], completion=30.0, junction=40.0))
    # without the junction position: the route's success
    assert traffic_signs_success(_rec("Completed", [], junction=None))
    assert not traffic_signs_success(_rec("Failed - Agent got blocked", [], completion=50.0, junction=None))
