"""Tests for envs.routes / envs.route_graph: route files, mapping onto lane graphs, dense routes, commands."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from envs.maps.build import convert_opendrive
from envs.maps.network import LaneGraph, load_lane_graph
from envs.routes import (
    RouteFileError,
    RouteOffMapError,
    RouteSpec,
    map_route,
    match_route,
    parse_routes,
    random_route,
    select_routes,
)
from envs.scene import RoadOption, Route

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROUTES = SHARED_DATA / "routes"
CARLA_MAPS = SHARED_DATA / "carla" / "maps"
B2D = ROUTES / "bench2drive220_town01-05.xml"
LB1_TRAINING = ROUTES / "leaderboard1_training_town01-05.xml"


def shared_data(test):
    """Marks a test that reads ../shared/data and skips it when the folder is absent."""
    present = ROUTES.is_dir() and CARLA_MAPS.is_dir()
    return pytest.mark.shared_data(pytest.mark.skipif(not present, reason="../shared/data not present")(test))


# ------------------------------------------------------------------------------------ helpers


def _spec(route_id: str, xy: list[tuple[float, float]], yaw: list[float] | None = None) -> RouteSpec:
    pts = np.asarray(xy, dtype=np.float64)
    return RouteSpec(route_id, "Mini", pts, np.zeros(len(pts)), None if yaw is None else np.asarray(yaw))


def _check_dense(route: Route) -> None:
    n = len(route.points)
    assert n >= 2
    for arr in (route.yaw, route.command, route.lane, route.speed_limit, route.cum_length):
        assert len(arr) == n
    step = np.linalg.norm(np.diff(route.points, axis=0), axis=1)
    assert step.max() <= 1.0 / Route.POINTS_PER_METER + 1e-6  # no jumps
    assert np.all(step[:-1] > 0.09)  # evenly spaced (the last step may be shorter)
    assert np.allclose(np.diff(route.cum_length), step, atol=1e-6)
    assert route.cum_length[0] == 0.0
    kink = np.abs(np.angle(np.exp(1j * np.diff(route.yaw))))
    assert kink.max() < math.radians(90)  # never doubles back
    assert np.all(route.speed_limit > 0)
    assert route.command.dtype == np.int8 and route.lane.dtype == np.int32
    assert set(np.unique(route.command)) <= {int(o) for o in RoadOption if o != RoadOption.VOID}
    # Target points: the start, the end, every command change, no gap over 50 m.
    idx = [int(np.argmin(np.linalg.norm(route.points - p, axis=1))) for p in route.target_points]
    assert idx[0] == 0 and idx[-1] == n - 1 and idx == sorted(idx)
    assert np.diff(route.cum_length[idx]).max() <= 50.0 + 1e-6
    changes = np.flatnonzero(route.command[1:] != route.command[:-1]) + 1
    assert set(changes.tolist()) <= set(idx)
    assert np.array_equal(route.target_commands, route.command[idx])


def _distance_to_polyline(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    a, b = line[:-1], line[1:]
    d = b - a
    out = np.empty(len(points))
    for k, p in enumerate(points):
        t = np.clip(np.einsum("ij,ij->i", p - a, d) / np.maximum(np.einsum("ij,ij->i", d, d), 1e-12), 0, 1)
        out[k] = np.min(np.linalg.norm(a + t[:, None] * d - p, axis=1))
    return out


# --------------------------------------------------------------------------- a hand-made network
# Edge a: two lanes east along y = 0 (a_0, rightmost) and y = 3.5 (a_1), x 0..200. Through junction n1,
# a_0 continues straight onto d (east) and a_1 turns left onto c (north). Edge b lies far away, unconnected.
_ARC = " ".join(
    f"{200 + 10 * math.sin(t):.3f},{13.5 - 10 * math.cos(t):.3f}" for t in np.linspace(0, math.pi / 2, 10)
)
MINI_NET = f"""<?xml version="1.0" encoding="UTF-8"?>
<net version="1.16">
  <location netOffset="0.00,0.00" convBoundary="0.00,0.00,700.00,200.00" origBoundary="0,0,700,200"
            projParameter="!"/>
  <edge id=":n1_0" function="internal">
    <lane id=":n1_0_0" index="0" speed="13.89" length="10.00" shape="200.00,0.00 210.00,0.00"/>
  </edge>
  <edge id=":n1_1" function="internal">
    <lane id=":n1_1_0" index="0" speed="8.00" length="15.70" shape="{_ARC}"/>
  </edge>
  <edge id="a" from="n0" to="n1" priority="1">
    <lane id="a_0" index="0" speed="13.89" length="200.00" width="3.50" shape="0.00,0.00 200.00,0.00"/>
    <lane id="a_1" index="1" speed="13.89" length="200.00" width="3.50" shape="0.00,3.50 200.00,3.50"/>
  </edge>
  <edge id="b" from="n4" to="n5" priority="1">
    <lane id="b_0" index="0" speed="13.89" length="200.00" width="3.50" shape="500.00,50.00 700.00,50.00"/>
  </edge>
  <edge id="c" from="n1" to="n2" priority="1">
    <lane id="c_0" index="0" speed="11.00" length="186.50" width="3.50" shape="210.00,13.50 210.00,200.00"/>
  </edge>
  <edge id="d" from="n1" to="n3" priority="1">
    <lane id="d_0" index="0" speed="13.89" length="190.00" width="3.50" shape="210.00,0.00 400.00,0.00"/>
  </edge>
  <junction id="n1" type="priority" x="205.00" y="5.00" incLanes="a_0 a_1" intLanes=":n1_0_0 :n1_1_0"
            shape="200,-2 212,-2 212,16 200,16"/>
  <connection from="a" to="d" fromLane="0" toLane="0" via=":n1_0_0" dir="s" state="M"/>
  <connection from="a" to="c" fromLane="1" toLane="0" via=":n1_1_0" dir="l" state="M"/>
  <connection from=":n1_0" to="d" fromLane="0" toLane="0" dir="s" state="M"/>
  <connection from=":n1_1" to="c" fromLane="0" toLane="0" dir="l" state="M"/>
</net>
"""


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> LaneGraph:
    path = tmp_path_factory.mktemp("mini") / "mini.net.xml"
    path.write_text(MINI_NET)
    return load_lane_graph(path)


def test_mini_straight_route(mini):
    # CARLA coordinates: y is the world's y negated (netOffset 0, 0).
    route = map_route(_spec("s", [(20, 0), (100, 0), (300, 0)]), mini)
    _check_dense(route)
    assert route.length == pytest.approx(280.0, abs=0.05)
    assert np.allclose(route.points[:, 1], 0.0, atol=1e-9)
    assert {mini.lane_ids[i] for i in route.lane} == {"a_0", ":n1_0_0", "d_0"}
    junction = route.lane == mini.lane(":n1_0_0")
    assert np.all(route.command[junction] == RoadOption.STRAIGHT)
    assert np.all(route.command[~junction] == RoadOption.LANEFOLLOW)
    assert route.route_id == "s" and route.town == "Mini"
    assert np.allclose(route.yaw, 0.0, atol=1e-9)
    assert route.speed_limit[0] == pytest.approx(13.89)


def test_mini_lane_change_then_left_turn(mini):
    # From the right lane of a to c (north): change left on a, then turn left through the junction.
    spec = _spec("lt", [(20, 0), (210, -100)], yaw=[0.0, -90.0])
    match = match_route(spec, mini)
    assert [mini.lane_ids[i] for i in match.lane] == ["a_0", "c_0"]
    assert match.distance.max() < 1e-6
    route = map_route(spec, mini)
    _check_dense(route)
    assert RoadOption.CHANGELANELEFT in route.command and RoadOption.CHANGELANERIGHT not in route.command
    turn = route.lane == mini.lane(":n1_1_0")
    assert turn.any() and np.all(route.command[turn] == RoadOption.LEFT)
    assert RoadOption.LEFT in route.target_commands and RoadOption.CHANGELANELEFT in route.target_commands
    # The lane change is a smooth blend of 10-20 m, not a step, and lies on edge a.
    lc = np.flatnonzero(route.command == RoadOption.CHANGELANELEFT)
    assert 10.0 <= route.cum_length[lc[-1]] - route.cum_length[lc[0]] <= 20.0
    assert np.all(route.points[lc, 0] < 200.0)
    y = route.points[lc, 1]
    assert np.all(np.diff(y) >= -1e-9) and y[0] < 0.1 and y[-1] > 3.4
    assert np.abs(np.diff(route.yaw)).max() < math.radians(5)
    # Ends heading north on c, 100 m up.
    assert route.points[-1] == pytest.approx([210.0, 100.0], abs=1e-6)
    assert route.yaw[-1] == pytest.approx(math.pi / 2, abs=1e-3)


def test_mini_right_turn_only_route_uses_lane_change_right(mini):
    route = map_route(_spec("r", [(20, -3.5), (150, 0)]), mini)
    assert RoadOption.CHANGELANERIGHT in route.command
    assert route.points[0] == pytest.approx([20.0, 3.5], abs=1e-6)
    assert route.points[-1] == pytest.approx([150.0, 0.0], abs=1e-6)


def test_mini_off_map_and_disconnected(mini):
    with pytest.raises(RouteOffMapError, match=r"route far .*waypoint 1 at CARLA \(100.0, -500.0\)"):
        map_route(_spec("far", [(20, 0), (100, -500)]), mini)
    with pytest.raises(RouteOffMapError, match=r"route island .*waypoints 0 .* and 1 .*not connected"):
        map_route(_spec("island", [(20, 0), (600, -50)]), mini)
    # Backwards along a one-way road is disconnected too.
    with pytest.raises(RouteOffMapError, match="not connected"):
        map_route(_spec("back", [(150, 0), (20, 0)]), mini)


def test_mini_random_route_deterministic(mini):
    a = random_route(mini, np.random.default_rng(7), min_length=50.0, max_length=150.0)
    b = random_route(mini, np.random.default_rng(7), min_length=50.0, max_length=150.0)
    assert a.route_id == b.route_id and a.route_id.startswith("random-")
    assert np.array_equal(a.points, b.points) and np.array_equal(a.command, b.command)
    _check_dense(a)
    assert 50.0 - 1e-6 <= a.length <= 150.0 + 1e-6
    with pytest.raises(ValueError):
        random_route(mini, np.random.default_rng(0), min_length=100.0, max_length=50.0)


# ----------------------------------------------------------------------------------- parsing
B2D_MINI = """<?xml version='1.0' encoding='utf-8'?>
<routes>
  <route id="7" town="Town04" road_id="3">
    <waypoints>
      <position x="1.0" y="2.0" z="0.5"/>
      <position x="3.0" y="4.0" z="0.5"/>
      <position x="5.0" y="6.0" z="0.6"/>
    </waypoints>
    <scenarios>
      <scenario name="Cut_1" type="StaticCutIn">
        <trigger_point x="3.0" y="4.0" z="0.5" yaw="90.0"/>
        <distance value="60"/>
        <other_actor_location x="10" y="11" z="0.1" yaw="180"/>
      </scenario>
    </scenarios>
    <weathers>
      <weather route_percentage="0" cloudiness="5.0"/>
      <weather route_percentage="100" cloudiness="50.0"/>
    </weathers>
  </route>
  <route id="8" town="Town01">
    <waypoints><position x="0" y="0" z="0"/><position x="9" y="0" z="0"/></waypoints>
  </route>
</routes>
"""

LB1_MINI = """<?xml version='1.0' encoding='utf-8'?>
<routes>
  <route id="0" town="Town01">
    <weather cloudiness="0" sun_altitude_angle="70"/>
    <waypoint pitch="0.0" roll="0.0" x="338.7" y="226.75" yaw="269.9" z="0.0"/>
    <waypoint pitch="0.0" roll="0.0" x="321.9" y="194.6" yaw="179.8" z="0.0"/>
  </route>
</routes>
"""


def test_parse_bench2drive_format(tmp_path):
    path = tmp_path / "b2d.xml"
    path.write_text(B2D_MINI)
    specs = parse_routes(path)
    assert [s.route_id for s in specs] == ["7", "8"]
    s = specs[0]
    assert s.town == "Town04" and s.source_file == str(path) and s.attrs == {"road_id": "3"}
    assert s.waypoints.shape == (3, 2) and np.allclose(s.waypoints[2], [5.0, 6.0])
    assert np.allclose(s.z, [0.5, 0.5, 0.6]) and s.yaw is None
    (sc,) = s.scenarios
    assert (sc.name, sc.type, sc.trigger_point) == ("Cut_1", "StaticCutIn", (3.0, 4.0, 0.5, 90.0))
    assert sc.params == {
        "distance": {"value": "60"},
        "other_actor_location": {"x": "10", "y": "11", "z": "0.1", "yaw": "180"},
    }
    assert [w["cloudiness"] for w in s.weathers] == ["5.0", "50.0"]
    assert specs[1].scenarios == [] and specs[1].weathers == []


def test_parse_leaderboard1_format(tmp_path):
    path = tmp_path / "lb1.xml"
    path.write_text(LB1_MINI)
    (s,) = parse_routes(path)
    assert s.route_id == "0" and s.town == "Town01"
    assert np.allclose(s.waypoints, [[338.7, 226.75], [321.9, 194.6]])
    assert s.yaw is not None and np.allclose(s.yaw, [269.9, 179.8])
    assert s.weathers == [{"cloudiness": "0", "sun_altitude_angle": "70"}] and s.scenarios == []


def test_parse_errors(tmp_path):
    with pytest.raises(RouteFileError, match="route file not found"):
        parse_routes(tmp_path / "nope.xml")
    bad = tmp_path / "bad.xml"
    bad.write_text("<routes>\n  <route id='1' town='Town01'>\n    <waypoint x='1' y='2'\n</routes>\n")
    with pytest.raises(RouteFileError, match=r"malformed route XML .* line 4"):
        parse_routes(bad)
    cases = {
        "no id": (
            "<routes><route town='T'><waypoint x='1' y='2'/><waypoint x='3' y='4'/></route></routes>",
            r"route #0 .*has no id",
        ),
        "one waypoint": (
            "<routes><route id='r5' town='T'><waypoint x='1' y='2'/></route></routes>",
            r"route r5 has 1 waypoint\(s\)",
        ),
        "nan": (
            "<routes><route id='r6' town='T'><waypoints><position x='1' y='2' z='0'/>"
            "<position x='abc' y='2' z='0'/></waypoints></route></routes>",
            r"route r6, <position> #1 attribute x: non-numeric .*'abc'",
        ),
        "no trigger": (
            "<routes><route id='r7' town='T'><waypoint x='1' y='2'/><waypoint x='3' y='4'/>"
            "<scenarios><scenario name='s' type='X'/></scenarios></route></routes>",
            r"route r7: scenario 's' has no <trigger_point>",
        ),
        "root": ("<route id='1'/>", r"root element <route>"),
    }
    for name, (text, pattern) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.xml"
        path.write_text(text)
        with pytest.raises(RouteFileError, match=pattern):
            parse_routes(path)


def test_select_routes(tmp_path):
    path = tmp_path / "b2d.xml"
    path.write_text(B2D_MINI)
    specs = parse_routes(path)
    assert [s.route_id for s in select_routes(specs, [8, "7"])] == ["8", "7"]
    with pytest.raises(RouteFileError, match=r"unknown route id\(s\) 99, x; available: 7, 8"):
        select_routes(specs, ["99", "7", "x"])


@pytest.mark.parametrize(
    ("name", "count", "fmt"),
    [
        ("bench2drive220_town01-05.xml", 40, "b2d"),
        ("leaderboard1_training_town01-05.xml", 40, "lb1"),
        ("longest6_town01-05.xml", 30, "lb1"),
        ("lav_town02-05.xml", 16, "lb1"),
    ],
)
@shared_data
def test_parse_real_route_files(name, count, fmt):
    specs = parse_routes(ROUTES / name)
    assert len(specs) == count
    assert len({s.route_id for s in specs}) == count
    for s in specs:
        assert s.town in {"Town01", "Town02", "Town03", "Town04", "Town05"}
        assert len(s.waypoints) >= 2 and np.isfinite(s.waypoints).all()
        assert (s.yaw is None) == (fmt == "b2d")
        assert len(s.scenarios) == (1 if fmt == "b2d" else 0)
        assert s.weathers or fmt == "lb1"  # Leaderboard 1.0 routes carry a <weather> only sometimes


@shared_data
def test_parse_real_scenario_params():
    specs = {s.route_id: s for s in parse_routes(B2D)}
    (sc,) = specs["28087"].scenarios
    assert sc.type == "NonSignalizedJunctionLeftTurnEnterFlow"
    assert sc.trigger_point == (222.8, -246.0, 0.0, 359.6)
    assert sc.params == {"flow_speed": {"value": "10"}, "source_dist_interval": {"from": "19", "to": "26"}}
    (sc,) = specs["24206"].scenarios
    assert sc.params["distance"] == {"value": "45"} and sc.params["direction"] == {"value": "right"}
    assert "trigger_point" not in sc.params


# ------------------------------------------------------------------------------- CARLA towns
@pytest.fixture(scope="session")
def town(tmp_path_factory):
    """town(name) -> LaneGraph, each CARLA town converted once per session into a temporary cache."""
    cache: dict[str, LaneGraph] = {}
    out_dir = tmp_path_factory.mktemp("route-nets")

    def get(name: str) -> LaneGraph:
        if name not in cache:
            cache[name] = load_lane_graph(convert_opendrive(CARLA_MAPS / f"{name}.xodr", out_dir))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def town04_b2d(town):
    lanes = town("Town04")
    specs = [s for s in parse_routes(B2D) if s.town == "Town04"]
    return lanes, specs, [match_route(s, lanes) for s in specs], [map_route(s, lanes) for s in specs]


@shared_data
def test_town04_bench2drive_routes_fit(town04_b2d):
    lanes, specs, matches, routes = town04_b2d
    assert len(specs) == 12
    dist = np.concatenate([m.distance for m in matches])
    assert np.percentile(dist, 95) < 0.2
    for spec, route in zip(specs, routes, strict=True):
        _check_dense(route)
        assert route.town == "Town04" and route.route_id == spec.route_id
        assert lanes.drivable[route.lane].all()
        world = lanes.carla_to_world(spec.waypoints)
        # The dense route passes through the waypoints (lane centres) ...
        assert np.percentile(_distance_to_polyline(world, route.points), 95) < 0.2
        assert np.linalg.norm(route.points[0] - world[0]) < 0.5
        assert np.linalg.norm(route.points[-1] - world[-1]) < 0.5
        # ... and is as long as the waypoint polyline (chords cut the junction curves a little).
        chord = float(np.sum(np.linalg.norm(np.diff(world, axis=0), axis=1)))
        assert chord - 0.5 <= route.length <= 1.1 * chord


@shared_data
def test_town04_commands(town04_b2d):
    lanes, specs, _, routes = town04_b2d
    by_id = {s.route_id: (s, r) for s, r in zip(specs, routes, strict=True)}
    for rid in ("28087", "28093", "28099"):  # the left-turn scenarios
        spec, route = by_id[rid]
        assert "LeftTurn" in spec.scenarios[0].type
        left = route.command == RoadOption.LEFT
        assert left.sum() > 50 and lanes.is_internal[route.lane[left]].all()
        assert RoadOption.RIGHT not in route.command
        assert RoadOption.LEFT in route.target_commands
        # The yaw turns left by about 90 degrees over the route.
        turn = math.degrees(np.angle(np.exp(1j * (route.yaw[-1] - route.yaw[0]))))
        assert 60 < turn < 120
    _, straight = by_id["24785"]  # ConstructionObstacle on a plain road
    assert set(np.unique(straight.command)) == {int(RoadOption.LANEFOLLOW)}


@shared_data
def test_town01_leaderboard1_route_follows_roads(town):
    lanes = town("Town01")
    spec = select_routes(parse_routes(LB1_TRAINING), ["0"])[0]
    assert spec.town == "Town01" and len(spec.waypoints) == 11
    map_route(spec, lanes)  # warm-up
    start = time.perf_counter()
    route = map_route(spec, lanes)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    _check_dense(route)
    world = lanes.carla_to_world(spec.waypoints)
    chord = float(np.sum(np.linalg.norm(np.diff(world, axis=0), axis=1)))
    assert route.length > 600 and chord <= route.length <= 1.2 * chord
    # Sparse waypoints, yet every dense point lies on a lane centre (the route follows the roads) ...
    for p, lane in zip(route.points[::10], route.lane[::10], strict=True):
        (_, dist, _, _), *_ = lanes.nearest_lanes(float(p[0]), float(p[1]), radius=3.0)
        assert dist < 0.05
        assert lanes.drivable[lane]
    # ... through the waypoints (the Leaderboard 1.0 Town01 ones sit up to ~0.7 m off today's lanes).
    assert _distance_to_polyline(world, route.points).max() < 1.0
    assert {RoadOption.LEFT, RoadOption.RIGHT} & set(route.command.tolist())


@shared_data
def test_town04_errors(town04_b2d):
    lanes, specs, _, _ = town04_b2d
    spec = specs[0]
    moved = RouteSpec(spec.route_id, spec.town, spec.waypoints.copy(), spec.z, spec.yaw)
    moved.waypoints[5] += (500.0, 500.0)
    with pytest.raises(RouteOffMapError, match=rf"route {spec.route_id} \(Town04\): waypoint 5 at CARLA"):
        map_route(moved, lanes)
    with pytest.raises(RouteFileError, match="unknown route id"):
        select_routes(specs, ["no-such-route"])


@shared_data
def test_town04_random_routes(town):
    lanes = town("Town04")
    for seed in range(5):
        a = random_route(lanes, np.random.default_rng(seed), min_length=200.0, max_length=600.0)
        b = random_route(lanes, np.random.default_rng(seed), min_length=200.0, max_length=600.0)
        assert a.route_id == b.route_id and np.array_equal(a.points, b.points)
        assert 200.0 - 1e-6 <= a.length <= 600.0 + 1e-6
        _check_dense(a)
    c = random_route(lanes, np.random.default_rng(99), min_length=200.0, max_length=600.0)
    assert not np.array_equal(c.points[:10], a.points[:10])
