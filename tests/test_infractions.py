"""Infraction tracking, route progress, termination, scores and Bench2Drive summaries."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from envs.infractions import (
    PENALTY,
    RECORD_KEYS,
    STATUS_BLOCKED,
    STATUS_COMPLETED,
    STATUS_ROUTE_DEV,
    STATUS_TIMEOUT,
    InfractionTracker,
    InfractionType,
    comfort_fraction,
    contact_geometry,
    efficiency,
    is_success,
    summarize,
)
from envs.maps.network import LaneGraph
from envs.scene import (
    AgentKind,
    Agents,
    EgoState,
    LightState,
    RoadOption,
    Route,
    Scene,
    StopSigns,
    TrafficLights,
)

DT = 0.05
STOP_LINE = np.array([[100.0, -1.6], [100.0, 1.6]])  # across lane a_0's end, right side first
HALF_LENGTH = 2.45  # EgoState default: the front crosses x = 100 when the centre passes 97.55


# ---------------------------------------------------------------------------------- fixtures


def make_lanes(net_offset: tuple[float, float] = (0.0, 0.0)) -> LaneGraph:
    """A T junction at x = 100..110: a_0 (east, 0..100) -> straight :j_0_0 -> b_0 (110..200),
    or left :j_1_0 -> c_0 (north from (110, 10)); d_0 runs west on the opposite side of a_0."""
    polys = [
        np.array([[0.0, 0.0], [100.0, 0.0]]),
        np.array([[100.0, 0.0], [110.0, 0.0]]),
        np.array([[100.0, 0.0], [104.0, 0.5], [107.5, 2.5], [109.5, 6.0], [110.0, 10.0]]),
        np.array([[110.0, 0.0], [200.0, 0.0]]),
        np.array([[110.0, 10.0], [110.0, 60.0]]),
        np.array([[100.0, 3.2], [0.0, 3.2]]),
    ]
    ids = ["a_0", ":j_0_0", ":j_1_0", "b_0", "c_0", "d_0"]
    n = len(polys)
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.cumsum([len(p) for p in polys])
    lengths = [float(np.sum(np.hypot(*np.diff(p, axis=0).T))) for p in polys]
    return LaneGraph(
        net_path="test.net.xml",
        lane_ids=ids,
        edge_of_lane=[i.rsplit("_", 1)[0] for i in ids],
        points=np.concatenate(polys),
        offsets=offsets,
        width=np.full(n, 3.2),
        length=np.asarray(lengths),
        speed_limit=np.full(n, 13.89),
        is_internal=np.array([False, True, True, False, False, False]),
        is_sidewalk=np.zeros(n, bool),
        is_crossing=np.zeros(n, bool),
        drivable=np.ones(n, bool),
        lane_index=np.zeros(n, np.int32),
        left=np.full(n, -1, np.int32),
        right=np.full(n, -1, np.int32),
        succ_offsets=np.array([0, 2, 3, 4, 4, 4, 4], np.int64),
        succ=np.array([1, 2, 3, 4], np.int32),
        junction_ids=["j"],
        junction_polygons=[np.array([[100.0, -5.0], [112.0, -5.0], [112.0, 10.0], [100.0, 10.0]])],
        junction_type=["traffic_light"],
        net_offset=np.asarray(net_offset, dtype=np.float64),
        bounds=np.array([0.0, -5.0, 200.0, 60.0]),
    )


def make_route(length: float = 200.0, lane_of_x: bool = True) -> Route:
    """Straight route along +x from (0, 0), 10 points per metre, over a_0, :j_0_0 and b_0."""
    x = np.round(np.arange(0.0, length + 1e-9, 0.1), 6)
    n = len(x)
    if lane_of_x:
        lane = np.where(x < 100.0, 0, np.where(x < 110.0, 1, 3)).astype(np.int32)
    else:
        lane = np.zeros(n, np.int32)
    return Route(
        route_id="test_route",
        points=np.column_stack([x, np.zeros(n)]),
        yaw=np.zeros(n),
        command=np.full(n, int(RoadOption.LANEFOLLOW), np.int8),
        lane=lane,
        speed_limit=np.full(n, 13.89),
        cum_length=x.copy(),
        target_points=np.array([[0.0, 0.0], [length, 0.0]]),
        target_commands=np.array([int(RoadOption.LANEFOLLOW)] * 2, np.int8),
        town="Test",
    )


def agents(rows: list[tuple[str, AgentKind, tuple[float, float, float, float, float], float]]) -> Agents:
    """Agents from (id, kind, box, speed) rows."""
    if not rows:
        return Agents()
    n = len(rows)
    speeds = np.array([r[3] for r in rows], dtype=np.float64)
    yaws = np.array([r[2][2] for r in rows])
    return Agents(
        ids=[r[0] for r in rows],
        kind=np.array([int(r[1]) for r in rows], np.int8),
        box=np.array([r[2] for r in rows], dtype=np.float64),
        height=np.full(n, 1.5),
        velocity=np.column_stack([speeds * np.cos(yaws), speeds * np.sin(yaws)]),
        speed=speeds,
        accel=np.zeros(n),
        color=np.zeros((n, 3), np.uint8),
    )


class Driver:
    """Feeds a tracker one Scene per tick; the ego is placed where the test says."""

    def __init__(self, tracker: InfractionTracker, route: Route, lanes: LaneGraph | None = None):
        self.tracker, self.route, self.lanes = tracker, route, lanes
        self.tick = 0
        self.new: list = []

    def at(
        self, x: float, y: float = 0.0, speed: float = 0.0, yaw: float = 0.0, others: Agents | None = None,
        lights: TrafficLights | None = None, stops: StopSigns | None = None,
    ) -> list:
        scene = Scene(
            tick=self.tick, time=self.tick * DT, ego=EgoState(x, y, yaw, speed),
            agents=others if others is not None else Agents(),
            lights=lights if lights is not None else TrafficLights(),
            stop_signs=stops if stops is not None else StopSigns(),
            route=self.route, lanes=self.lanes,
        )
        self.tick += 1
        out = self.tracker.update(scene)
        self.new += out
        return out

    def drive(self, x0: float, x1: float, speed: float, **kw: object) -> None:
        """Constant speed along y = 0 from x0 to x1 (inclusive of x0). The first call starts at the
        route's start, as the ego does (progress is searched in a 30 m window ahead of the last index)."""
        if self.tick == 0 and x0 > 0.0:
            self.drive(0.0, x0 - 20.0 * DT, 20.0)
        step = speed * DT
        n = max(round((x1 - x0) / step), 0)
        for k in range(n + 1):
            self.at(x0 + k * step, speed=speed, **kw)


def types(infractions: list) -> list[str]:
    return [inf.type.value for inf in infractions]


def red_lights(states: list[LightState], vias: list[int]) -> TrafficLights:
    n = len(states)
    return TrafficLights(
        tls_id=["tl_j"] * n,
        state=np.array([int(s) for s in states], np.int8),
        position=np.tile([101.0, -3.0], (n, 1)),
        stop_line=np.tile(STOP_LINE, (n, 1, 1)),
        from_lane=np.zeros(n, np.int32),
        via_lane=np.array(vias, np.int32),
    )


STOP = StopSigns(position=np.array([[101.0, -3.0]]), stop_line=STOP_LINE[None], lane=np.array([0], np.int32))


# ---------------------------------------------------------------------------------- collisions


def test_static_collision_counted_once_while_in_contact() -> None:
    route = make_route()
    tr = InfractionTracker(route)
    d = Driver(tr, route)
    cone = agents([("cone_1", AgentKind.STATIC, (50.0, 0.0, 0.0, 1.0, 1.0), 0.0)])
    d.drive(40.0, 46.0, 5.0, others=cone)  # front reaches 48.45: no contact
    assert tr.infractions == []
    for _ in range(40):  # two seconds overlapping (ego front at 49.45 + ...)
        d.at(47.0, speed=0.0, others=cone)
    assert types(tr.infractions) == ["collision_static"]
    inf = tr.infractions[0]
    assert inf.other_id == "cone_1" and inf.other_kind == "static"
    assert "type=static" in inf.message and "id=cone_1" in inf.message
    # Apart for 0.5 s, then back in contact: the same collision.
    for _ in range(10):
        d.at(40.0, speed=0.0, others=cone)
    d.at(47.0, others=cone)
    assert len(tr.infractions) == 1
    # Apart for a full second: a new collision.
    for _ in range(20):
        d.at(40.0, speed=0.0, others=cone)
    d.at(47.0, others=cone)
    assert types(tr.infractions) == ["collision_static", "collision_static"]
    assert tr.score_penalty == pytest.approx(0.65**2)


def test_pedestrian_collision_penalty() -> None:
    route = make_route()
    tr = InfractionTracker(route)
    d = Driver(tr, route)
    walker = agents([("walker_7", AgentKind.PEDESTRIAN, (60.0, 0.3, math.pi / 2, 0.3, 0.3), 1.2)])
    d.drive(0.0, 60.0, 10.0, others=walker)
    assert types(tr.infractions) == ["collision_pedestrian"]
    assert tr.score_penalty == pytest.approx(0.5)
    assert tr.score == pytest.approx(tr.completion * 0.5)
    assert tr.record()["infractions"]["collisions_pedestrian"][0].startswith("Agent collided against object")


@pytest.mark.parametrize("kind", [AgentKind.VEHICLE, AgentKind.BICYCLE, AgentKind.EMERGENCY])
def test_vehicle_like_collisions(kind: AgentKind) -> None:
    route = make_route()
    tr = InfractionTracker(route)
    d = Driver(tr, route)
    other = agents([("v1", kind, (30.0, 1.0, 0.2, 2.3, 1.0), 3.0)])
    d.drive(20.0, 30.0, 5.0, others=other)
    assert types(tr.infractions) == ["collision_vehicle"]


def test_collision_contact_tells_who_hit_whom() -> None:
    """A standing ego struck from behind and a moving ego driving into a car ahead: the records' contact
    says on which side the other was and how fast each moved."""
    route = make_route()
    tr = InfractionTracker(route)
    d = Driver(tr, route)
    d.drive(20.0, 30.0, 5.0)
    rear = agents([("rear", AgentKind.VEHICLE, (26.0, 0.4, 0.0, 2.3, 1.0), 6.0)])  # ego rear at 27.55
    d.at(30.0, speed=0.0, others=rear)
    ahead = agents([("ahead", AgentKind.VEHICLE, (34.0, -0.2, 0.0, 2.3, 1.0), 1.0)])  # its rear at 31.7
    d.at(30.0, speed=4.0, others=ahead)
    first, second = (inf.as_dict() for inf in tr.infractions)
    hit, bump = first["contact"], second["contact"]
    assert first["other_id"] == "rear" and hit["side"] == "rear"
    assert hit["ego_speed"] == 0.0 and hit["other_speed_along"] == pytest.approx(6.0)
    assert hit["forward"] == pytest.approx(-4.0) and hit["left"] == pytest.approx(0.4)
    assert second["other_id"] == "ahead" and bump["side"] == "front"
    assert bump["ego_speed"] == 4.0 and bump["other_speed"] == pytest.approx(1.0)
    counts = summarize([tr.record()])["collision_contacts"]
    assert counts == {"front": 1, "rear": 1, "left": 0, "right": 0, "struck_standing": 1}
    ego_north = np.array([0.0, 0.0, math.pi / 2, 2.45, 1.06])
    side = contact_geometry(ego_north, 3.0, np.array([-1.8, 0.5, 0.0, 2.0, 1.0]), np.zeros(2))
    assert side["side"] == "left" and side["forward"] == pytest.approx(0.5)
    assert side["left"] == pytest.approx(1.8)


def test_score_arithmetic_completion_80_one_vehicle_collision() -> None:
    route = make_route()
    tr = InfractionTracker(route)
    d = Driver(tr, route)
    d.drive(0.0, 155.0, 10.0)
    car = agents([("car_3", AgentKind.VEHICLE, (163.0, 0.0, 0.0, 2.4, 1.0), 0.0)])
    d.at(160.0, speed=10.0, others=car)
    assert tr.completion == pytest.approx(80.0)
    assert tr.score == pytest.approx(48.0)
    rec = tr.record()
    assert rec["scores"] == pytest.approx({"score_route": 80.0, "score_penalty": 0.6, "score_composed": 48.0})
    assert not tr.done and tr.status == "Running"


# ---------------------------------------------------------------------------------- traffic lights


@pytest.mark.parametrize("with_lanes", [True, False])
def test_red_light_counted_once(with_lanes: bool) -> None:
    route = make_route()
    lanes = make_lanes() if with_lanes else None
    tr = InfractionTracker(route, lanes)
    d = Driver(tr, route, lanes)
    lights = red_lights([LightState.RED, LightState.RED], [1, 2])  # straight and left links, both red
    d.drive(80.0, 97.5, 10.0, lights=lights)  # front at 99.95
    assert tr.infractions == []
    d.drive(98.0, 130.0, 10.0, lights=lights)
    assert types(tr.infractions) == ["red_light"]
    inf = tr.infractions[0]
    assert inf.other_id == "tl_j" and inf.location == (101.0, -3.0)
    assert inf.tick == d.tick - 65  # the tick the ego centre reached x = 98 (front 100.45)
    assert tr.score_penalty == pytest.approx(0.7)


def test_green_and_yellow_lights_are_fine() -> None:
    route = make_route()
    for state in (LightState.GREEN, LightState.YELLOW, LightState.OFF):
        tr = InfractionTracker(route)
        Driver(tr, route).drive(80.0, 130.0, 10.0, lights=red_lights([state, state], [1, 2]))
        assert tr.infractions == []


def test_red_light_stopping_before_the_line() -> None:
    route = make_route()
    tr = InfractionTracker(route)
    d = Driver(tr, route)
    red = red_lights([LightState.RED, LightState.RED], [1, 2])
    green = red_lights([LightState.GREEN, LightState.GREEN], [1, 2])
    d.drive(80.0, 96.0, 8.0, lights=red)
    for _ in range(60):
        d.at(96.0, lights=red)
    d.drive(96.0, 130.0, 8.0, lights=green)
    assert tr.infractions == []


def test_red_light_mixed_links_resolved_by_route_and_by_path() -> None:
    lanes = make_lanes()
    # The route goes straight (via :j_0_0 = lane 1): its green arrow applies, the red left turn does not.
    route = make_route()
    tr = InfractionTracker(route, lanes)
    Driver(tr, route, lanes).drive(80.0, 130.0, 10.0, lights=red_lights([LightState.GREEN, LightState.RED],
                                                                            [1, 2]))
    assert tr.infractions == []
    tr = InfractionTracker(route, lanes)
    Driver(tr, route, lanes).drive(80.0, 130.0, 10.0, lights=red_lights([LightState.RED, LightState.GREEN],
                                                                            [1, 2]))
    assert types(tr.infractions) == ["red_light"]
    # A route whose lanes name neither via lane: the via lane the ego actually enters decides.
    route = make_route(lane_of_x=False)
    tr = InfractionTracker(route, lanes)
    Driver(tr, route, lanes).drive(80.0, 130.0, 10.0, lights=red_lights([LightState.RED, LightState.GREEN],
                                                                            [1, 2]))
    assert types(tr.infractions) == ["red_light"]
    tr = InfractionTracker(route, lanes)
    Driver(tr, route, lanes).drive(80.0, 130.0, 10.0, lights=red_lights([LightState.GREEN, LightState.RED],
                                                                            [1, 2]))
    assert tr.infractions == []


def test_red_light_ignores_driving_the_wrong_way_across_the_line() -> None:
    lanes = make_lanes()
    route = make_route()
    tr = InfractionTracker(route, lanes, check_lanes=False)
    d = Driver(tr, route, lanes)
    red = red_lights([LightState.RED], [1])
    for k in range(40):  # westward across x = 100 on y = 0 (front leads at x - 2.45)
        d.at(110.0 - 0.5 * k, speed=10.0, yaw=math.pi, lights=red)
    assert not any(i.type == InfractionType.RED_LIGHT for i in tr.infractions)


# ------------------------------------------------------------------------------------ stop signs


@pytest.mark.parametrize("with_lanes", [True, False])
def test_stop_sign_full_stop_is_fine(with_lanes: bool) -> None:
    route = make_route()
    lanes = make_lanes() if with_lanes else None
    tr = InfractionTracker(route, lanes)
    d = Driver(tr, route, lanes)
    d.drive(70.0, 95.0, 5.0, stops=STOP)
    for _ in range(10):  # front at 97.45: 2.55 m before the line, standing
        d.at(95.0, speed=0.0, stops=STOP)
    d.drive(95.0, 120.0, 4.0, stops=STOP)
    assert tr.infractions == []


def test_stop_sign_rolling_through_is_an_infraction() -> None:
    lanes = make_lanes(net_offset=(10.0, 20.0))
    route = make_route()
    tr = InfractionTracker(route, lanes)
    d = Driver(tr, route, lanes)
    d.drive(70.0, 96.0, 5.0, stops=STOP)
    d.drive(96.0, 98.0, 0.4, stops=STOP)  # slow, but never below 0.1 m/s
    d.drive(98.0, 120.0, 4.0, stops=STOP)
    assert types(tr.infractions) == ["stop_infraction"]
    inf = tr.infractions[0]
    assert inf.other_id == "stop:a_0"
    assert inf.carla_location == pytest.approx((101.0 - 10.0, -(-3.0 - 20.0)))
    assert "(x=91.000, y=23.000, z=0.000)" in inf.message
    assert tr.score_penalty == pytest.approx(0.8)


def test_stop_far_before_the_line_does_not_count() -> None:
    route = make_route()
    tr = InfractionTracker(route)
    d = Driver(tr, route)
    d.drive(70.0, 85.0, 5.0, stops=STOP)
    for _ in range(20):  # front at 87.45: 12.5 m before the line
        d.at(85.0, speed=0.0, stops=STOP)
    d.drive(85.0, 120.0, 5.0, stops=STOP)
    assert types(tr.infractions) == ["stop_infraction"]


# ------------------------------------------------------------------------------------ termination


def test_completed_route() -> None:
    route = make_route()
    tr = InfractionTracker(route)
    d = Driver(tr, route)
    d.drive(0.0, 200.0, 10.0)
    assert tr.done and tr.status == STATUS_COMPLETED
    assert tr.completion >= 99.0 and tr.score == 100.0
    rec = tr.record()
    assert is_success(rec)
    assert rec["meta"]["ticks"] == tr.ticks and rec["meta"]["route_length"] == pytest.approx(200.0)
    assert tr.update(Scene(0, 0.0, EgoState(0, 0, 0, 0), Agents(), TrafficLights(), StopSigns(), route,
                           None)) == []  # no-op once done


def test_off_route_terminates_beyond_30_m() -> None:
    route = make_route()
    tr = InfractionTracker(route)
    d = Driver(tr, route)
    d.drive(0.0, 50.0, 10.0)
    d.at(50.0, 29.0, speed=10.0, yaw=math.pi / 2)
    assert not tr.done
    new = d.at(50.0, 31.0, speed=10.0, yaw=math.pi / 2)
    assert types(new) == ["route_dev"]
    assert tr.done and tr.status == STATUS_ROUTE_DEV == "Failed - Agent deviated from the route"
    assert tr.completion == pytest.approx(25.0)  # progress did not follow the ego off the route
    assert tr.score == pytest.approx(25.0)  # no penalty for the deviation itself
    assert not is_success(tr.record())


def test_blocked_after_60_seconds() -> None:
    route = make_route()
    tr = InfractionTracker(route)
    d = Driver(tr, route)
    d.drive(0.0, 10.0, 5.0)
    for _ in range(1200):  # 59.95 s below 0.1 m/s
        d.at(10.0, speed=0.05)
    assert not tr.done
    new = d.at(10.0, speed=0.0)  # 60 s
    assert types(new) == ["vehicle_blocked"]
    assert tr.done and tr.status == STATUS_BLOCKED == "Failed - Agent got blocked"
    assert not tr.timed_out


def test_moving_resets_the_blocked_timer() -> None:
    route = make_route()
    tr = InfractionTracker(route)
    d = Driver(tr, route)
    for _ in range(1000):
        d.at(10.0, speed=0.0)
    d.at(10.1, speed=1.0)
    for _ in range(1000):
        d.at(10.1, speed=0.0)
    assert not tr.done


def test_tick_cap() -> None:
    route = make_route()
    tr = InfractionTracker(route)  # 4000 ticks
    d = Driver(tr, route)
    for k in range(4000):  # ticks 0 .. 3999 at 0.5 m/s
        d.at(0.025 * k, speed=0.5)
    assert not tr.done and tr.ticks == 3999
    new = d.at(100.0, speed=0.5)  # tick 4000: 200 s simulated
    assert types(new) == ["route_timeout"]
    assert tr.done and tr.timed_out and tr.status == STATUS_TIMEOUT == "Failed - Agent timed out"
    assert tr.completion == pytest.approx(50.0)
    assert tr.record()["meta"]["duration_game"] == pytest.approx(200.0)


def test_progress_is_monotonic_and_windowed() -> None:
    route = make_route()
    tr = InfractionTracker(route)
    d = Driver(tr, route)
    d.drive(0.0, 60.0, 10.0)
    assert tr.completion == pytest.approx(30.0)
    d.at(40.0, speed=0.0)  # back along the route: progress stays
    assert tr.completion == pytest.approx(30.0)
    d.at(100.0, speed=0.0)  # a jump beyond the 30 m window: progress stops at the window's end
    assert tr.completion == pytest.approx(45.0)
    assert not tr.done  # 10 m from the window's end: still on the route


# ------------------------------------------------------------------------------- scenarios, records


def test_scenario_infractions_and_record_shape() -> None:
    lanes = make_lanes()
    route = make_route()
    tr = InfractionTracker(route, lanes)
    d = Driver(tr, route, lanes)
    d.drive(0.0, 40.0, 10.0)
    scene = Scene(d.tick, d.tick * DT, EgoState(40.0, 0.0, 0.0, 10.0), Agents(), TrafficLights(), StopSigns(),
                  route, lanes)
    tr.add_scenario_infraction("scenario_timeout", "ParkedObstacle_1: ego did not pass", scene)
    tr.add_scenario_infraction("yield_emergency_vehicle_infractions", "did not yield")
    with pytest.raises(ValueError, match="unknown infraction type"):
        tr.add_scenario_infraction("speeding")
    assert tr.score_penalty == pytest.approx(0.7 * 0.7)
    rec = json.loads(json.dumps(tr.record()))
    assert set(rec["infractions"]) == set(RECORD_KEYS)
    assert rec["infractions"]["scenario_timeouts"] == ["ParkedObstacle_1: ego did not pass"]
    assert rec["infractions"]["yield_emergency_vehicle_infractions"] == ["did not yield"]
    assert rec["num_infractions"] == 2
    assert set(rec["scores"]) == {"score_route", "score_penalty", "score_composed"}
    assert {"route_length", "duration_game", "ticks"} <= set(rec["meta"])
    assert rec["route_id"] == "test_route" and rec["status"] == "Running"
    assert rec["infraction_details"][0]["location"] == [40.0, 0.0]
    assert PENALTY[InfractionType.COLLISION_STATIC] == 0.65


def test_outside_route_lanes_recorded_not_penalised() -> None:
    lanes = make_lanes()
    route = make_route()
    tr = InfractionTracker(route, lanes)
    d = Driver(tr, route, lanes)
    d.drive(0.0, 20.0, 10.0)  # in lane
    assert tr.outside_lanes_distance == 0.0
    for k in range(1, 41):  # 20 m on the shoulder, 4 m right of the lane centre
        d.at(20.0 + 0.5 * k, -4.0, speed=10.0)
    for k in range(1, 21):  # 10 m in the opposite lane, driving east
        d.at(40.0 + 0.5 * k, 3.2, speed=10.0)
    d.drive(50.0, 60.0, 10.0)
    # 20 m + the 4 m side step, then 10 m + the diagonal step across (0.5 m forward, 7.2 m left).
    expected = math.hypot(0.5, 4.0) + 39 * 0.5 + math.hypot(0.5, 7.2) + 19 * 0.5
    assert tr.outside_lanes_distance == pytest.approx(expected)
    new = tr.terminate("Failed - Simulation crashed")
    assert types(new) == ["outside_route_lanes"]
    assert tr.status == "Failed - Simulation crashed" and tr.done
    assert tr.score_penalty == 1.0
    assert "% of the completed route" in new[0].message
    # The junction area is not "outside", even off the internal lanes.
    tr = InfractionTracker(route, lanes)
    d = Driver(tr, route, lanes)
    d.drive(90.0, 99.0, 10.0)
    for k in range(1, 11):
        d.at(100.0 + k, -3.0, speed=10.0)
    assert tr.outside_lanes_distance == 0.0


def test_min_speed_and_efficiency_recorded_only() -> None:
    route = make_route()
    tr = InfractionTracker(route)
    d = Driver(tr, route)
    x = 0.0
    while not tr.done:
        lead = agents([("lead", AgentKind.VEHICLE, (x + 30.0, 0.0, 0.0, 2.4, 1.0), 10.0),
                       ("parked", AgentKind.STATIC, (x + 20.0, 6.0, 0.0, 2.4, 1.0), 0.0),
                       ("far", AgentKind.VEHICLE, (x, 300.0, 0.0, 2.4, 1.0), 30.0)])
        d.at(x, speed=5.0, others=lead)
        x += 5.0 * DT
    assert tr.status == STATUS_COMPLETED
    rec = tr.record()
    assert len(rec["min_speed_checkpoints"]) == 20
    assert rec["efficiency"] == pytest.approx(50.0)
    assert len(rec["infractions"]["min_speed_infractions"]) == 20
    assert tr.score == 100.0 and is_success(rec)
    assert tr.infraction_count == 0


def test_summarize() -> None:
    def rec(status: str, composed: float, route: float, infr: dict | None = None,
            length: float = 1000.0) -> dict:
        base = {k: [] for k in RECORD_KEYS}
        base.update(infr or {})
        return {"route_id": "r", "status": status, "infractions": base,
                "scores": {"score_route": route, "score_penalty": composed / route if route else 1.0,
                           "score_composed": composed},
                "meta": {"route_length": length}, "efficiency": 80.0}

    records = [
        rec(STATUS_COMPLETED, 100.0, 100.0),
        rec(STATUS_COMPLETED, 100.0, 100.0, {"min_speed_infractions": ["slow"]}),
        rec(STATUS_COMPLETED, 60.0, 100.0, {"collisions_vehicle": ["bump"]}),
        rec(STATUS_BLOCKED, 48.0, 80.0, {"collisions_vehicle": ["x"], "vehicle_blocked": ["y"]}),
    ]
    s = summarize(records, total_routes=5)
    assert s["driving_score"] == pytest.approx(308.0 / 5)
    assert s["success_rate"] == pytest.approx(40.0)
    assert s["num_success"] == 2
    assert s["km_driven"] == pytest.approx(3.8)
    assert s["infraction_counts"]["collisions_vehicle"] == 2
    assert s["infractions_per_km"]["collisions_vehicle"] == pytest.approx(2 / 3.8)
    assert s["route_completion"] == pytest.approx(95.0)
    assert s["status_counts"] == {STATUS_COMPLETED: 3, STATUS_BLOCKED: 1}
    assert s["efficiency"] == pytest.approx(80.0)
    assert summarize(records)["driving_score"] == pytest.approx(308.0 / 4)
    with pytest.raises(ValueError):
        summarize(records, total_routes=2)
    assert summarize([], total_routes=3)["driving_score"] == 0.0


# ------------------------------------------------------------------------------ trajectory metrics


def test_comfort_fraction() -> None:
    t = np.arange(200) * DT
    # Cruising at 10 m/s: all comfortable.
    assert comfort_fraction(10.0 * t, np.zeros_like(t), np.zeros_like(t)) == pytest.approx(1.0)
    # Gentle arc: 10 m/s with a 0.3 rad/s yaw rate (lateral 3 m/s^2).
    yaw = 0.3 * t
    x = np.cumsum(10.0 * np.cos(yaw)) * DT
    y = np.cumsum(10.0 * np.sin(yaw)) * DT
    assert comfort_fraction(x, y, yaw) == pytest.approx(1.0)
    # Hard braking (-6 m/s^2) for the second half: those segments fail.
    v = np.where(t < 5.0, 20.0, np.maximum(20.0 - 6.0 * (t - 5.0), 0.0))
    xb = np.concatenate([[0.0], np.cumsum(v[:-1]) * DT])
    frac = comfort_fraction(xb, np.zeros_like(t), np.zeros_like(t))
    assert 0.3 < frac < 0.8
    assert comfort_fraction(xb, np.zeros_like(t), np.zeros_like(t), speed=v) == pytest.approx(frac, abs=0.15)
    # Yaw wrapping does not create spikes.
    wrapped = (np.pi - 0.01 + 0.02 * t / t[-1] + np.pi) % (2 * np.pi) - np.pi
    assert comfort_fraction(np.zeros_like(t), np.zeros_like(t), wrapped) == pytest.approx(1.0)
    assert math.isnan(comfort_fraction(np.zeros(5), np.zeros(5), np.zeros(5)))


def test_efficiency() -> None:
    ego = np.full(400, 5.0)
    traffic = np.full(400, 10.0)
    assert efficiency(ego, traffic) == pytest.approx(50.0)
    traffic[:200] = np.nan  # no traffic in the first half: those checkpoints are skipped
    ego[200:] = 12.0
    assert efficiency(ego, traffic) == pytest.approx(120.0)
    progress = np.linspace(0, 100, 400)
    assert efficiency(ego, traffic, progress) == pytest.approx(120.0)
    assert math.isnan(efficiency(ego, np.full(400, np.nan)))
    # A checkpoint where traffic stands nearly still (ratio > 1000 %) is left out, as Bench2Drive does.
    still = np.full(400, 10.0)
    still[:20] = 0.01
    assert efficiency(np.full(400, 5.0), still) == pytest.approx(50.0)
