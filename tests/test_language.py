"""Language labels (policies/language.py) on constructed expert states."""

from __future__ import annotations

import numpy as np
import pytest

from envs.scene import AgentKind, RoadOption
from policies.base import Cause, ExpertState
from policies.language import (
    BYPASS_REASONS,
    CLEAR_REASONS,
    ENHANCEMENTS,
    JUNCTION_REASONS,
    ROUTE_PHRASES,
    SLOW_REASONS,
    SPEED_PHRASES,
    TURN_REASONS,
    YIELD_REASONS,
    Enhancement,
    LabelGenerator,
    RouteAction,
    SpeedAction,
    canonical_commentary,
    cause_kind,
    commentary,
    describe,
    enhanced,
    register_enhancement,
    route_action,
    speed_action,
    spoken_speed_action,
    trigger_key,
)
from policies.prompts import FOLLOW_ANSWER, REFUSE_ANSWER

SEEDS = range(40)
ALL_KINDS = [k.name.lower() for k in AgentKind] + ["red_light", "yellow_light", "stop_sign", "route_end"]
NOUNS = {
    "vehicle": ("vehicle", "car"),
    "pedestrian": ("pedestrian",),
    "bicycle": ("cyclist", "bicycle"),
    "static": ("obstacle",),
    "emergency": ("emergency vehicle",),
    "parked_vehicle": ("parked vehicle", "parked car"),
    "cone": ("cones",),
    "red_light": ("red",),
    "yellow_light": ("yellow",),
    "stop_sign": ("stop sign",),
    "route_end": ("route", "destination"),
}
# (target, speed, desired) producing each speed action
SPEEDS = {
    SpeedAction.REMAIN_STOPPED: (0.0, 0.0, 8.0),
    SpeedAction.STOP: (0.2, 5.0, 8.0),
    SpeedAction.START: (2.0, 0.0, 8.0),
    SpeedAction.ACCELERATE: (7.0, 5.0, 8.0),
    SpeedAction.DECELERATE: (3.0, 6.0, 8.0),
    SpeedAction.KEEP_REDUCED: (4.0, 4.2, 8.0),
    SpeedAction.KEEP: (8.0, 8.1, 8.0),
}


def state(speed_act=SpeedAction.KEEP, command=RoadOption.LANEFOLLOW, cause=None, **kw) -> ExpertState:
    target, v, desired = SPEEDS[speed_act]
    c = Cause(cause, "id0", 12.0) if isinstance(cause, str) else cause
    return ExpertState(target, desired, v, int(command), cause=c, **kw)


def split(text: str) -> tuple[str, str]:
    route, _, speed = text.partition(". ")
    assert text.endswith(".") and speed, text
    return route, speed[:-1]


def family(sentence: str, table: dict) -> set:
    return {k for k, phrases in table.items() if any(sentence.startswith(p) for p in phrases)}


def test_phrase_tables_are_unambiguous():
    for table in (ROUTE_PHRASES, SPEED_PHRASES):
        for k, phrases in table.items():
            assert len(phrases) >= 3
            for p in phrases:
                assert family(p, table) == {k}, p


@pytest.mark.parametrize(
    ("target", "speed", "desired", "expected"),
    [
        (0.0, 0.0, 8.0, SpeedAction.REMAIN_STOPPED),
        (0.49, 0.09, 8.0, SpeedAction.REMAIN_STOPPED),
        (0.49, 0.1, 8.0, SpeedAction.STOP),
        (0.0, 10.0, 8.0, SpeedAction.STOP),
        (0.5, 0.0, 8.0, SpeedAction.START),
        (6.0, 5.4, 8.0, SpeedAction.ACCELERATE),
        (5.0, 5.6, 8.0, SpeedAction.DECELERATE),
        (5.0, 5.4, 8.0, SpeedAction.KEEP_REDUCED),
        (5.0, 5.4, 5.4, SpeedAction.KEEP),
        (5.0, 5.4, None, SpeedAction.KEEP),
    ],
)
def test_speed_action_thresholds(target, speed, desired, expected):
    assert speed_action(target, speed, desired) is expected


def test_route_action_from_command_and_lane_change():
    assert route_action(int(RoadOption.LEFT)) is RouteAction.TURN_LEFT
    assert route_action(int(RoadOption.RIGHT)) is RouteAction.TURN_RIGHT
    assert route_action(int(RoadOption.STRAIGHT)) is RouteAction.STRAIGHT
    assert route_action(int(RoadOption.LANEFOLLOW)) is RouteAction.FOLLOW
    assert route_action(int(RoadOption.VOID)) is RouteAction.FOLLOW
    assert route_action(int(RoadOption.CHANGELANELEFT)) is RouteAction.CHANGE_LANE_LEFT
    assert route_action(int(RoadOption.CHANGELANERIGHT)) is RouteAction.CHANGE_LANE_RIGHT
    assert route_action(int(RoadOption.LEFT), "right") is RouteAction.CHANGE_LANE_RIGHT


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (RoadOption.LANEFOLLOW, RouteAction.FOLLOW),
        (RoadOption.LEFT, RouteAction.TURN_LEFT),
        (RoadOption.RIGHT, RouteAction.TURN_RIGHT),
        (RoadOption.STRAIGHT, RouteAction.STRAIGHT),
        (RoadOption.CHANGELANELEFT, RouteAction.CHANGE_LANE_LEFT),
        (RoadOption.CHANGELANERIGHT, RouteAction.CHANGE_LANE_RIGHT),
    ],
)
def test_route_action_phrase_family(command, expected):
    seen = set()
    for seed in SEEDS:
        route, _ = split(commentary(state(command=command), seed))
        assert family(route, ROUTE_PHRASES) == {expected}, route
        seen.add(route)
    assert len(seen) >= 3  # several phrasings are used


@pytest.mark.parametrize("action", list(SpeedAction))
def test_speed_action_phrase_family(action):
    seen = set()
    for seed in SEEDS:
        _, speed = split(commentary(state(action), seed))
        assert family(speed, SPEED_PHRASES) == {action}, speed
        seen.add(speed)
    assert len(seen) >= 3


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_reason_names_every_cause_kind(kind):
    for action in (SpeedAction.DECELERATE, SpeedAction.STOP, SpeedAction.REMAIN_STOPPED):
        seen = set()
        for seed in SEEDS:
            _, speed = split(commentary(state(action, cause=kind), seed))
            reason = speed[len(next(p for p in SPEED_PHRASES[action] if speed.startswith(p))):]
            assert reason in SLOW_REASONS[kind], speed
            assert any(n in reason for n in NOUNS[kind]), reason
            seen.add(reason)
        assert len(seen) >= 2
    # No cause, no reason while keeping speed on a free road.
    assert split(commentary(state(SpeedAction.KEEP), 0))[1] in SPEED_PHRASES[SpeedAction.KEEP]


def test_reason_phrases_for_key_situations():
    red = commentary(state(SpeedAction.STOP, cause="red_light"))
    assert red == "Follow the route. Stop now because of the red light."
    veh = commentary(state(SpeedAction.DECELERATE, cause="vehicle"))
    assert veh == "Follow the route. Decelerate to stay behind the vehicle."
    ped = commentary(state(SpeedAction.REMAIN_STOPPED, cause="walker"))  # alias of pedestrian
    assert ped.endswith("Remain stopped because of the pedestrian crossing.")
    # Cause given as an AgentKind name in upper case or as a value maps to the same kind.
    assert cause_kind("EMERGENCY") == cause_kind(int(AgentKind.EMERGENCY)) == "emergency"
    # Hazard flags stand in for a missing cause.
    haz = state(SpeedAction.DECELERATE, hazards={"walker": True})
    assert "pedestrian" in commentary(haz)
    # An unknown cause kind is still named.
    assert commentary(state(SpeedAction.DECELERATE, cause="junction")).endswith("because of the junction.")


@pytest.mark.parametrize("kind", ["parked_vehicle", "static", "cone", "vehicle", "bicycle"])
def test_lane_change_goes_around_the_obstacle(kind):
    for side, ra in (("left", RouteAction.CHANGE_LANE_LEFT), ("right", RouteAction.CHANGE_LANE_RIGHT)):
        for seed in SEEDS[:10]:
            s = state(SpeedAction.KEEP, cause=kind, lane_change=side)
            route, speed = split(commentary(s, seed))
            assert family(route, ROUTE_PHRASES) == {ra}
            assert any(r.split("{obj}")[0] in route for r in BYPASS_REASONS), route
            assert any(n in route for n in NOUNS[kind]), route
            assert family(speed, SPEED_PHRASES) == {SpeedAction.KEEP}
            assert describe(s).reason == "bypass"


def test_emergency_vehicle_is_yielded_to():
    s = state(SpeedAction.KEEP, cause="emergency", lane_change="right")
    for seed in SEEDS[:10]:
        route, _ = split(commentary(s, seed))
        assert any(route.endswith(r) for r in YIELD_REASONS), route
    slowing = commentary(state(SpeedAction.DECELERATE, cause="emergency"))
    assert "yield to the emergency vehicle" in slowing


def test_reasons_without_cause():
    turn = split(commentary(state(SpeedAction.DECELERATE, command=RoadOption.LEFT), 3))[1]
    assert any(turn.endswith(r) for r in TURN_REASONS), turn
    junction = split(commentary(state(SpeedAction.KEEP_REDUCED, command=RoadOption.STRAIGHT), 3))[1]
    assert any(junction.endswith(r) for r in JUNCTION_REASONS), junction
    start = split(commentary(state(SpeedAction.START), 3))[1]
    assert any(start.endswith(r) for r in CLEAR_REASONS), start
    stuck = commentary(state(SpeedAction.ACCELERATE, stuck=True))
    assert stuck.endswith("to get moving again.")


def test_same_seed_same_text_and_seeds_cover_phrasings():
    s = state(SpeedAction.DECELERATE, command=RoadOption.RIGHT, cause="bicycle")
    assert commentary(s, 7) == commentary(s, 7)
    assert commentary(s, np.random.default_rng(7)) == commentary(s, np.random.default_rng(7))
    texts = {commentary(s, seed) for seed in SEEDS}
    assert len(texts) >= 10
    gen_a, gen_b = LabelGenerator(5), LabelGenerator(5)
    # With ticks the text does not depend on the labelling order.
    forward = [gen_a.commentary(s, tick) for tick in range(20)]
    backward = [gen_b.commentary(s, tick) for tick in reversed(range(20))][::-1]
    assert forward == backward
    assert len(set(forward)) >= 5
    other = [LabelGenerator(6).commentary(s, tick) for tick in range(20)]
    assert other != forward
    # Without ticks, the generator's stream is reproducible from the seed.
    g1, g2 = LabelGenerator(9), LabelGenerator(9)
    assert [g1.commentary(s) for _ in range(5)] == [g2.commentary(s) for _ in range(5)]


def _openers(trigger: str) -> tuple[str, ...]:
    return ENHANCEMENTS[trigger].openers


def _has_opener(text: str, trigger: str) -> bool:
    low = text.lower()
    return any(o.lower() in low for o in _openers(trigger))


def test_enhanced_labels_differ_by_trigger_and_name_the_cause():
    follow_s = state(SpeedAction.DECELERATE, cause="vehicle")
    restart_s = state(SpeedAction.START, cause="vehicle")
    by_trigger = {
        "follow": {enhanced(follow_s, "follow", seed) for seed in SEEDS},
        "collision": {enhanced(follow_s, "collision", seed) for seed in SEEDS},
        "restart": {enhanced(restart_s, "restart", seed) for seed in SEEDS},
    }
    for trig, texts in by_trigger.items():
        assert len(texts) >= 5, texts
        for t in texts:
            assert _has_opener(t, trig), t
            assert not any(_has_opener(t, o) for o in by_trigger if o != trig), t
            assert any(n in t.lower() for n in NOUNS["vehicle"]), t
            assert t != commentary(follow_s) and t != commentary(restart_s)
    assert not by_trigger["follow"] & by_trigger["collision"]
    assert enhanced(follow_s, "follow") == "Brake now: the car ahead is slowing down."
    assert enhanced(state(SpeedAction.STOP, cause="pedestrian"), "collision") == (
        "Brake hard: a pedestrian is about to cross in front."
    )
    assert enhanced(state(SpeedAction.START), "restart") == "Move off now: the gap is clear."


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("trigger", ["follow", "collision"])
def test_enhanced_names_every_cause_kind(kind, trigger):
    s = state(SpeedAction.STOP, cause=kind)
    for seed in SEEDS[:15]:
        t = enhanced(s, trigger, seed)
        assert _has_opener(t, trigger), t
        assert any(n in t.lower() for n in NOUNS[kind]), t


def test_enhanced_restart():
    s = state(SpeedAction.START, cause="parked_vehicle", lane_change="left")
    for seed in SEEDS[:10]:
        t = enhanced(s, "restart", seed)
        assert _has_opener(t, "restart") and "left lane" in t and "parked" in t, t
    # The expert itself stays stopped: no "move off" wording, the plain commentary instead.
    stopped = state(SpeedAction.REMAIN_STOPPED, cause="red_light")
    assert enhanced(stopped, "restart", 4) == commentary(stopped, 4)
    assert "red" in enhanced(stopped, "restart", 4)


def test_unknown_trigger_falls_back_to_commentary_and_names_are_normalised():
    s = state(SpeedAction.DECELERATE, cause="cone")
    for seed in SEEDS[:10]:
        assert enhanced(s, "lane_invasion", seed) == commentary(s, seed)
        assert enhanced(s, "FollowTrigger", seed) == enhanced(s, "follow", seed)
    assert trigger_key(" Collision-Trigger ") == "collision"


def test_register_enhancement_for_a_user_trigger():
    register_enhancement(
        "TooFastTrigger",
        Enhancement(openers=("Ease off now",), clauses={"none": ("the speed is too high",)}),
    )
    try:
        t = enhanced(state(SpeedAction.DECELERATE), "too_fast", 1)
        assert "ease off now" in t.lower() and "speed is too high" in t
    finally:
        ENHANCEMENTS.pop(trigger_key("too_fast"))
    plain = state(SpeedAction.DECELERATE)
    assert enhanced(plain, "too_fast", 1) == commentary(plain, 1)


def test_pre_takeover_labels():
    gen = LabelGenerator(3)
    s = state(SpeedAction.STOP, cause="pedestrian")
    labels = gen.pre_takeover_labels(s, "collision", trigger_tick=120, n_pre=20)
    assert len(labels) == 20 and len(set(labels)) == 1
    assert labels[0] == LabelGenerator(3).enhanced(s, "collision", 120)
    assert "pedestrian" in labels[0] and _has_opener(labels[0], "collision")
    # Different triggers at the same tick give different labels.
    assert gen.enhanced(s, "follow", 120) != labels[0]


def test_follow_and_collision_wording_only_while_the_expert_slows():
    for act in (SpeedAction.ACCELERATE, SpeedAction.KEEP, SpeedAction.START):
        s = state(act, cause="vehicle")
        for trig in ("follow", "collision"):
            assert enhanced(s, trig, 5) == commentary(s, 5)
    slowing = (SpeedAction.DECELERATE, SpeedAction.STOP, SpeedAction.REMAIN_STOPPED, SpeedAction.KEEP_REDUCED)
    for act in slowing:
        assert _has_opener(enhanced(state(act, cause="vehicle"), "follow", 5), "follow")


def test_lane_change_cause_names_what_the_lane_change_is_for():
    # Driving past cones (nothing slows the ego: no cause), the lane change still says what it is for.
    cones = state(SpeedAction.ACCELERATE, lane_change="left", lane_change_cause=Cause("cone", "c1", 6.0))
    assert commentary(cones) == "Change lane to the left to go around the traffic cones. Accelerate."
    assert describe(cones).reason == "bypass" and describe(cones).cause == "cone"
    restart = enhanced(cones, "restart")
    assert "left lane" in restart and "cones" in restart
    ev = state(SpeedAction.KEEP, lane_change="right", lane_change_cause=Cause("emergency", "ev", 20.0))
    assert commentary(ev) == "Change lane to the right to make way for the emergency vehicle. Maintain speed."
    # The lane-change cause wins over the cause of a slow-down for the route sentence.
    both = state(SpeedAction.DECELERATE, cause="vehicle", lane_change="left",
                 lane_change_cause=Cause("parked_vehicle", "p", 9.0))
    assert describe(both).reason == "bypass" and describe(both).cause == "parked_vehicle"
    # Without a lane change the lane-change cause is not read.
    plain = state(SpeedAction.ACCELERATE, lane_change_cause=Cause("cone", "c1", 6.0))
    assert commentary(plain) == "Follow the route. Accelerate."


def test_takeover_label_is_the_enhanced_label_drawn_with_the_tick():
    gen = LabelGenerator(11)
    s = state(SpeedAction.DECELERATE, cause="bicycle")
    for tick in (0, 7, 300):
        assert gen.takeover_label(s, "follow", True, tick) == LabelGenerator(11).enhanced(s, "follow", tick)
        assert gen.takeover_label(s, "follow", False, tick) == gen.takeover_label(s, "follow", True, tick)
    assert len({gen.takeover_label(s, "follow", False, t) for t in range(30)}) > 3


def test_predicted_collision_reads_as_giving_way_not_following():
    s = state(SpeedAction.STOP, cause="vehicle", hazards={"collision": True})
    assert describe(s).reason == "conflict"
    assert commentary(s) == "Follow the route. Stop now to avoid a collision with the vehicle."
    texts = {commentary(s, seed) for seed in SEEDS}
    assert all("behind" not in t and "ahead" not in t for t in texts) and len(texts) > 5
    assert any("give way to" in t for t in texts) and any("other car" in t for t in texts)
    follow = {enhanced(s, "follow", seed) for seed in SEEDS}
    assert all(_has_opener(t, "follow") and "slowing down" not in t for t in follow)
    assert any("give way to" in t or "coming into our path" in t for t in follow)
    collision = enhanced(s, "collision")
    assert _has_opener(collision, "collision") and "collision course with the vehicle" in collision
    # Without the hazard it stays a leading object.
    plain = state(SpeedAction.STOP, cause="vehicle")
    assert commentary(plain) == "Follow the route. Stop now to stay behind the vehicle."


def _label_states() -> list[ExpertState]:
    """Every speed action x route command x cause (none, each kind, a collision course), lane changes
    around / for each kind, a stuck restart."""
    commands = (RoadOption.LANEFOLLOW, RoadOption.LEFT, RoadOption.RIGHT, RoadOption.STRAIGHT)
    states = [state(act, command=cmd, cause=kind) for act in SpeedAction for cmd in commands
              for kind in (None, *ALL_KINDS)]  # fmt: skip
    states += [state(act, cause="vehicle", hazards={"collision": True}) for act in SpeedAction]
    states += [
        state(SpeedAction.KEEP, cause=kind, lane_change=side)
        for kind in ALL_KINDS
        for side in ("left", "right")
    ]
    states.append(state(SpeedAction.ACCELERATE, stuck=True))
    return states


def test_canonical_commentary_gives_one_text_per_decision():
    states = _label_states()
    canonical = {}
    for s in states:
        texts = {canonical_commentary(commentary(s, seed)) for seed in SEEDS}
        assert len(texts) == 1, (s, texts)  # every phrasing of this label -> one text
        text = texts.pop()
        assert canonical_commentary(text) == text
        canonical[commentary(s)] = text
    # Labels that differ in meaning (their first phrasings differ) stay apart: the speed action and the
    # cause survive, only the wording is merged.
    assert len(set(canonical.values())) == len(canonical)
    assert canonical_commentary(
        "Keep following the lane. Reduce speed to keep a safe distance to the cyclist."
    ) == ("Follow the route. Decelerate to stay behind the cyclist.")
    assert canonical_commentary("Follow the road. Hold the speed.") == "Follow the route. Maintain speed."
    # Takeover openers are merged too; their clauses keep their wording.
    assert canonical_commentary("Slow down now: the car ahead is slowing down.") == (
        "Brake now: the car ahead is slowing down."
    )


def test_spoken_speed_action_reads_back_every_label():
    for s in _label_states():
        for seed in SEEDS:
            text = commentary(s, seed)
            assert spoken_speed_action(text) == describe(s).speed, text
    # other answer forms have no speed sentence: instruction answers, takeover openers
    others = (FOLLOW_ANSWER, REFUSE_ANSWER.format(why="hit it"), "Slow down now: the car is braking.", "")
    for text in others:
        assert spoken_speed_action(text) is None
