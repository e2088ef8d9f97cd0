"""Language labels from the expert's state: SimLingo-style commentary and TakeVLA's enhanced labels.

Commentary follows SimLingo's grammar, "{route action}. {speed action}{reason}.", e.g.
"Follow the route. Decelerate to stay behind the vehicle." or
"Change lane to the left to go around the parked vehicle. Maintain speed."

- Route action (`route_action`): from `ExpertState.lane_change` ("left" / "right" wins) or else the
  `command` (RoadOption): follow the road, turn left / right, go straight at the junction, change lane.
- Speed action (`speed_action`): from the target speed vs the current speed, thresholds below.
- Reason: names the cause object (`ExpertState.cause.kind`, or the hazard flags when no cause is set).
  A lane change for a static / parked / cone / slow-mover object (`ExpertState.lane_change_cause`, else
  the cause) reads "to go around ..." on the route sentence; one for an emergency vehicle "to yield to /
  make way for the emergency vehicle"; a slowing or stopped ego reads "to stay behind the vehicle",
  "because of the pedestrian crossing", "because of the red light", ...; one giving way to an object on a
  collision course (the expert's "collision" hazard: crossing or oncoming traffic) reads "to avoid a
  collision with the vehicle" / "to give way to ...". Without a cause a reduced speed before a junction
  reads "for the turn" / "before the junction", a start from standstill "as the road ahead is clear", a
  stuck restart "to get moving again".

Enhanced labels (`enhanced`, TakeVLA): for a takeover segment the label is rewritten by trigger type into
an urgent, causal sentence naming the cause: Follow ("Brake now: the car ahead is slowing down"),
Collision ("Brake hard: a pedestrian is about to cross in front"), Restart ("Move off now: the gap is
clear"). The enhanced label goes on the pre-takeover frames (the expert's state at the trigger) and on
the takeover frames (each frame's own state). A trigger without wording (user triggers can add theirs
with `register_enhancement`), a Follow / Collision once the expert no longer slows down, or a Restart
while the expert itself stays stopped, falls back to the plain commentary.

Every template has several phrasings (the tables below are plain data). The phrasing is drawn from a
`np.random.Generator` or an integer seed; `rng=None` picks the first (canonical) phrasing.
`LabelGenerator(seed)` draws from `default_rng([seed, tick, salt])` when given a tick, so a label does not
depend on the order in which frames are labelled.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from envs.scene import AgentKind, RoadOption
from policies.base import ExpertState

# ----------------------------------------------------------------------------------- speed action
STANDSTILL_SPEED = 0.1  # m/s: the ego counts as stopped below this speed
STOP_TARGET_SPEED = 0.5  # m/s: a target speed below this means "stop"
SPEED_DELTA = 0.5  # m/s: target vs speed (and target vs desired) band for keep / accelerate / decelerate


class SpeedAction(StrEnum):
    REMAIN_STOPPED = "remain_stopped"  # stopped, target below STOP_TARGET_SPEED
    STOP = "stop"  # moving, target below STOP_TARGET_SPEED
    START = "start"  # stopped, target at or above STOP_TARGET_SPEED
    ACCELERATE = "accelerate"  # target > speed + SPEED_DELTA
    DECELERATE = "decelerate"  # target < speed - SPEED_DELTA
    KEEP_REDUCED = "keep_reduced"  # |target - speed| <= SPEED_DELTA, target < desired - SPEED_DELTA
    KEEP = "keep"  # |target - speed| <= SPEED_DELTA otherwise


SLOWING = frozenset(
    {SpeedAction.REMAIN_STOPPED, SpeedAction.STOP, SpeedAction.DECELERATE, SpeedAction.KEEP_REDUCED}
)


def speed_action(target_speed: float, speed: float, desired_speed: float | None = None) -> SpeedAction:
    """Speed action from the target speed vs the current speed (m/s), SimLingo's 0.5 m/s thresholds.

    - target < STOP_TARGET_SPEED (0.5): REMAIN_STOPPED if speed < STANDSTILL_SPEED (0.1), else STOP;
    - speed < STANDSTILL_SPEED and target >= 0.5: START;
    - target > speed + SPEED_DELTA (0.5): ACCELERATE; target < speed - 0.5: DECELERATE;
    - otherwise KEEP_REDUCED when desired_speed is given and target < desired - 0.5, else KEEP.
    """
    if target_speed < STOP_TARGET_SPEED:
        return SpeedAction.REMAIN_STOPPED if speed < STANDSTILL_SPEED else SpeedAction.STOP
    if speed < STANDSTILL_SPEED:
        return SpeedAction.START
    if target_speed > speed + SPEED_DELTA:
        return SpeedAction.ACCELERATE
    if target_speed < speed - SPEED_DELTA:
        return SpeedAction.DECELERATE
    if desired_speed is not None and target_speed < desired_speed - SPEED_DELTA:
        return SpeedAction.KEEP_REDUCED
    return SpeedAction.KEEP


# ----------------------------------------------------------------------------------- route action
class RouteAction(StrEnum):
    FOLLOW = "follow"
    TURN_LEFT = "turn_left"
    TURN_RIGHT = "turn_right"
    STRAIGHT = "straight"
    CHANGE_LANE_LEFT = "change_lane_left"
    CHANGE_LANE_RIGHT = "change_lane_right"


_COMMAND_ACTIONS = {
    int(RoadOption.LEFT): RouteAction.TURN_LEFT,
    int(RoadOption.RIGHT): RouteAction.TURN_RIGHT,
    int(RoadOption.STRAIGHT): RouteAction.STRAIGHT,
    int(RoadOption.CHANGELANELEFT): RouteAction.CHANGE_LANE_LEFT,
    int(RoadOption.CHANGELANERIGHT): RouteAction.CHANGE_LANE_RIGHT,
}


def route_action(command: int, lane_change: str | None = None) -> RouteAction:
    """Route action: an ongoing lane change ("left" / "right") wins over the route's command."""
    if lane_change:
        side = lane_change.strip().lower()
        if side == "left":
            return RouteAction.CHANGE_LANE_LEFT
        if side == "right":
            return RouteAction.CHANGE_LANE_RIGHT
    return _COMMAND_ACTIONS.get(int(command), RouteAction.FOLLOW)


# ----------------------------------------------------------------------------------- cause kinds
LIGHT_AND_SIGN_KINDS = ("red_light", "yellow_light", "stop_sign", "route_end")
CAUSE_KINDS = tuple(k.name.lower() for k in AgentKind) + LIGHT_AND_SIGN_KINDS
_ALIASES = {
    "walker": "pedestrian",
    "car": "vehicle",
    "truck": "vehicle",
    "cyclist": "bicycle",
    "bike": "bicycle",
    "emergency_vehicle": "emergency",
    "parked": "parked_vehicle",
    "cones": "cone",
    "traffic_cone": "cone",
    "obstacle": "static",
    "red": "red_light",
    "yellow": "yellow_light",
    "traffic_light": "red_light",
    "stop": "stop_sign",
}
_HAZARD_KINDS = (
    ("red_light", "red_light"),
    ("stop_sign", "stop_sign"),
    ("walker", "pedestrian"),
    ("pedestrian", "pedestrian"),
    ("vehicle", "vehicle"),
)


def cause_kind(kind: str | int | None) -> str | None:
    """Canonical cause kind: AgentKind names in lower case, red_light / yellow_light / stop_sign /
    route_end; aliases ("walker", "car", ...) and AgentKind values are mapped; other names pass as given."""
    if kind is None:
        return None
    if isinstance(kind, int):
        try:
            return AgentKind(kind).name.lower()
        except ValueError:
            return None
    k = kind.strip().lower().replace(" ", "_").replace("-", "_")
    return _ALIASES.get(k, k) or None


def _state_cause(state: ExpertState) -> str | None:
    if state.cause is not None:
        return cause_kind(state.cause.kind)
    for flag, kind in _HAZARD_KINDS:
        if state.hazards.get(flag):
            return kind
    return None


# ----------------------------------------------------------------------------------- templates
ROUTE_PHRASES: dict[RouteAction, tuple[str, ...]] = {
    RouteAction.FOLLOW: (
        "Follow the route",
        "Follow the road",
        "Stay in the lane",
        "Keep following the lane",
    ),
    RouteAction.TURN_LEFT: (
        "Turn left at the junction",
        "Turn left at the intersection",
        "Take the left turn at the junction",
    ),
    RouteAction.TURN_RIGHT: (
        "Turn right at the junction",
        "Turn right at the intersection",
        "Take the right turn at the junction",
    ),
    RouteAction.STRAIGHT: (
        "Go straight at the junction",
        "Drive straight through the intersection",
        "Continue straight over the junction",
    ),
    RouteAction.CHANGE_LANE_LEFT: (
        "Change lane to the left",
        "Do a lane change to the left",
        "Move over to the left lane",
    ),
    RouteAction.CHANGE_LANE_RIGHT: (
        "Change lane to the right",
        "Do a lane change to the right",
        "Move over to the right lane",
    ),
}

SPEED_PHRASES: dict[SpeedAction, tuple[str, ...]] = {
    SpeedAction.REMAIN_STOPPED: ("Remain stopped", "Stay stopped", "Stay at a standstill"),
    SpeedAction.STOP: ("Stop now", "Come to a stop", "Brake to a stop"),
    SpeedAction.START: ("Start moving", "Drive off", "Pull away"),
    SpeedAction.ACCELERATE: ("Accelerate", "Speed up", "Pick up speed"),
    SpeedAction.DECELERATE: ("Decelerate", "Slow down", "Reduce speed"),
    SpeedAction.KEEP_REDUCED: (
        "Maintain the reduced speed",
        "Keep the reduced speed",
        "Stay at the reduced speed",
    ),
    SpeedAction.KEEP: ("Maintain speed", "Keep the current speed", "Hold the speed"),
}

# Reasons on the speed sentence while slowing for / stopped at the cause (leading space included).
SLOW_REASONS: dict[str, tuple[str, ...]] = {
    "vehicle": (
        " to stay behind the vehicle",
        " to keep a safe distance to the car ahead",
        " because of the vehicle ahead",
    ),
    "pedestrian": (
        " because of the pedestrian crossing",
        " to let the pedestrian cross",
        " because a pedestrian is on the road",
    ),
    "bicycle": (
        " to stay behind the cyclist",
        " because of the bicycle ahead",
        " to keep a safe distance to the cyclist",
    ),
    "static": (
        " because of the obstacle",
        " because an obstacle blocks the lane",
        " because of the obstacle ahead",
    ),
    "emergency": (
        " to yield to the emergency vehicle",
        " to make way for the emergency vehicle",
        " to let the emergency vehicle pass",
    ),
    "parked_vehicle": (
        " because of the parked vehicle",
        " because a parked car blocks the lane",
        " because of the parked car ahead",
    ),
    "cone": (
        " because of the traffic cones",
        " because cones block the lane",
        " because of the construction cones",
    ),
    "red_light": (
        " because of the red light",
        " since the traffic light is red",
        " because the light ahead is red",
    ),
    "yellow_light": (
        " because of the yellow light",
        " since the light is turning yellow",
        " because the yellow light will turn red",
    ),
    "stop_sign": (" because of the stop sign", " to obey the stop sign", " since there is a stop sign"),
    "route_end": (" because the route ends", " since the destination is reached", " at the end of the route"),
}

# Reasons on the route sentence while changing lanes because of the cause ({obj} from OBJECTS).
BYPASS_REASONS: tuple[str, ...] = (" to go around {obj}", " to pass {obj}", " to drive around {obj}")
YIELD_REASONS: tuple[str, ...] = (
    " to make way for the emergency vehicle",
    " to yield to the emergency vehicle",
    " to let the emergency vehicle pass",
)
BYPASS_KINDS = frozenset({"vehicle", "bicycle", "static", "parked_vehicle", "cone", "pedestrian"})

OBJECTS: dict[str, tuple[str, ...]] = {
    "vehicle": ("the vehicle", "the slow car"),
    "pedestrian": ("the pedestrian",),
    "bicycle": ("the cyclist", "the bicycle"),
    "static": ("the obstacle",),
    "emergency": ("the emergency vehicle",),
    "parked_vehicle": ("the parked vehicle", "the parked car"),
    "cone": ("the traffic cones", "the cones"),
    "red_light": ("the red light",),
    "yellow_light": ("the yellow light",),
    "stop_sign": ("the stop sign",),
    "route_end": ("the end of the route",),
}

# Reasons on the speed sentence while giving way to an object on a collision course ({obj}).
CONFLICT_REASONS: tuple[str, ...] = (
    " to avoid a collision with {obj}",
    " to give way to {obj}",
    " to let {obj} pass",
)
CONFLICT_OBJECTS: dict[str, tuple[str, ...]] = {"vehicle": ("the vehicle", "the other car")}

# Reasons without a cause object.
TURN_REASONS: tuple[str, ...] = (" for the turn", " to take the turn safely", " before turning")
JUNCTION_REASONS: tuple[str, ...] = (
    " before the junction",
    " for the intersection",
    " to cross the junction safely",
)
CLEAR_REASONS: tuple[str, ...] = (
    " as the road ahead is clear",
    " since the way is free",
    " because the gap is clear",
)
STUCK_REASONS: tuple[str, ...] = (" to get moving again", " after waiting too long", " to get unstuck")


def _pick(options: Sequence[str], rng: np.random.Generator | None) -> str:
    return options[0] if rng is None or len(options) == 1 else options[int(rng.integers(len(options)))]


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator | None:
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(int(rng))


def _object(kind: str, rng: np.random.Generator | None) -> str:
    return _pick(OBJECTS.get(kind, (f"the {kind.replace('_', ' ')}",)), rng)


def _conflict_object(kind: str, rng: np.random.Generator | None) -> str:
    return _pick(CONFLICT_OBJECTS[kind], rng) if kind in CONFLICT_OBJECTS else _object(kind, rng)


def _slow_reason(kind: str, rng: np.random.Generator | None) -> str:
    if kind in SLOW_REASONS:
        return _pick(SLOW_REASONS[kind], rng)
    return f" because of the {kind.replace('_', ' ')}"


@dataclass(frozen=True)
class LabelParts:
    """The structured commentary: what the text says, before phrasing."""

    route: RouteAction
    speed: SpeedAction
    cause: str | None  # canonical cause kind named in the reason, if any
    reason: str  # "slow" | "conflict" | "bypass" | "yield" | "turn" | "junction" | "clear" | "stuck" | ""


def describe(state: ExpertState) -> LabelParts:
    """Route action, speed action and the kind of reason the commentary will give."""
    route = route_action(state.command, state.lane_change)
    speed = speed_action(state.target_speed, state.speed, state.desired_speed)
    kind = _state_cause(state)
    changing = route in (RouteAction.CHANGE_LANE_LEFT, RouteAction.CHANGE_LANE_RIGHT)
    if changing and state.lane_change:
        lc = state.lane_change_cause
        lc_kind = cause_kind(lc.kind) if lc is not None else kind
        if lc_kind == "emergency":
            return LabelParts(route, speed, lc_kind, "yield")
        if lc_kind in BYPASS_KINDS:
            return LabelParts(route, speed, lc_kind, "bypass")
    if kind is not None and (speed in SLOWING or (speed == SpeedAction.KEEP and state.cause is not None)):
        # A predicted collision (the expert's forecast, hazard "collision") is crossing or oncoming
        # traffic to give way to, not something to stay behind.
        return LabelParts(route, speed, kind, "conflict" if state.hazards.get("collision") else "slow")
    if speed in (SpeedAction.DECELERATE, SpeedAction.KEEP_REDUCED):
        if route in (RouteAction.TURN_LEFT, RouteAction.TURN_RIGHT):
            return LabelParts(route, speed, None, "turn")
        if route == RouteAction.STRAIGHT:
            return LabelParts(route, speed, None, "junction")
    if speed in (SpeedAction.START, SpeedAction.ACCELERATE):
        if state.stuck:
            return LabelParts(route, speed, None, "stuck")
        if speed == SpeedAction.START:
            return LabelParts(route, speed, None, "clear")
    return LabelParts(route, speed, None, "")


def commentary(state: ExpertState, rng: np.random.Generator | int | None = None) -> str:
    """SimLingo-style commentary "{route action}. {speed action}{reason}." for one expert state."""
    g = _as_rng(rng)
    parts = describe(state)
    route = _pick(ROUTE_PHRASES[parts.route], g)
    speed = _pick(SPEED_PHRASES[parts.speed], g)
    route_reason = speed_reason = ""
    if parts.reason == "bypass":
        route_reason = _pick(BYPASS_REASONS, g).format(obj=_object(parts.cause or "", g))
    elif parts.reason == "yield":
        route_reason = _pick(YIELD_REASONS, g)
    elif parts.reason == "conflict":
        speed_reason = _pick(CONFLICT_REASONS, g).format(obj=_conflict_object(parts.cause or "", g))
    elif parts.reason == "slow":
        speed_reason = _slow_reason(parts.cause or "", g)
    elif parts.reason:
        table = {
            "turn": TURN_REASONS,
            "junction": JUNCTION_REASONS,
            "clear": CLEAR_REASONS,
            "stuck": STUCK_REASONS,
        }[parts.reason]
        speed_reason = _pick(table, g)
    return f"{route}{route_reason}. {speed}{speed_reason}."


# ----------------------------------------------------------------------------------- enhancement
@dataclass(frozen=True)
class Enhancement:
    """Urgent, causal wording of one trigger type.

    formats: sentence templates with {opener} / {Opener} and {clause} / {Clause} (capitalised forms);
    clauses: per canonical cause kind, "none" for no cause, "bypass" for a lane change around the cause,
    "conflict" for an object on a collision course (crossing / oncoming); {obj} and {side} are filled in.
    applies: the expert speed actions this wording fits (None: all).
    """

    openers: tuple[str, ...]
    clauses: Mapping[str, tuple[str, ...]]
    formats: tuple[str, ...] = ("{Opener}: {clause}.", "{Opener}, {clause}.", "{Clause}: {opener}.")
    applies: frozenset[SpeedAction] | None = None


ENHANCEMENTS: dict[str, Enhancement] = {
    "follow": Enhancement(
        openers=("Brake now", "Slow down now", "Start braking now"),
        clauses={
            "vehicle": ("the car ahead is slowing down", "the vehicle in front is braking"),
            "pedestrian": (
                "a pedestrian is walking onto the road ahead",
                "there is a pedestrian on the road ahead",
            ),
            "bicycle": ("the cyclist ahead is slowing down", "the bicycle in front is braking"),
            "static": ("an obstacle blocks the lane ahead", "there is an obstacle in the lane"),
            "emergency": ("the emergency vehicle needs the way", "an emergency vehicle must get through"),
            "parked_vehicle": ("a parked vehicle blocks the lane ahead", "there is a parked car in the lane"),
            "cone": ("traffic cones close the lane ahead", "there are cones in the lane"),
            "red_light": ("the light ahead is red", "the traffic light has turned red"),
            "yellow_light": ("the light ahead is yellow", "the yellow light is about to turn red"),
            "stop_sign": ("there is a stop sign ahead", "a stop sign is coming up"),
            "route_end": ("the route ends just ahead", "the destination is right ahead"),
            "none": ("the traffic ahead is slowing down", "the road ahead calls for a lower speed"),
            "other": ("{obj} is ahead in our lane", "{obj} ahead is in the way"),
            "conflict": ("{obj} is coming into our path", "we must give way to {obj}"),
        },
        applies=SLOWING,
    ),
    "collision": Enhancement(
        openers=("Brake hard", "Stop immediately", "Emergency braking now"),
        clauses={
            "vehicle": ("we are about to hit the car ahead", "a vehicle is cutting into our path"),
            "pedestrian": (
                "a pedestrian is about to cross in front",
                "a pedestrian is stepping into our path",
            ),
            "bicycle": ("a cyclist is about to cross in front", "we are closing in on the cyclist"),
            "static": ("we are about to hit an obstacle", "an obstacle is right in front"),
            "emergency": (
                "the emergency vehicle is about to cross our path",
                "we are about to hit the emergency vehicle",
            ),
            "parked_vehicle": ("we are about to hit the parked vehicle", "a parked car is right in our path"),
            "cone": ("we are about to hit the traffic cones", "cones are right in our path"),
            "red_light": (
                "we are about to run the red light",
                "the light is red and cross traffic is coming",
            ),
            "yellow_light": ("we are about to run the yellow light", "the yellow light turns red right now"),
            "stop_sign": ("we are about to run the stop sign", "the stop sign is right ahead"),
            "route_end": ("the route ends right in front", "we are overshooting the end of the route"),
            "none": ("something is right in our path", "the way ahead is suddenly blocked"),
            "other": ("we are about to hit {obj}", "{obj} is right in our path"),
            "conflict": ("we are on a collision course with {obj}", "{obj} is about to cross our path"),
        },
        formats=("{Opener}: {clause}.", "{Opener} to avoid a collision: {clause}.", "{Clause}: {opener}."),
        applies=SLOWING,
    ),
    "restart": Enhancement(
        openers=("Move off now", "Start driving now", "Go now"),
        clauses={
            "none": ("the gap is clear", "the road ahead is free", "nothing blocks the way any more"),
            "vehicle": ("there is enough room behind the car ahead", "the vehicle ahead has moved on"),
            "pedestrian": ("the pedestrian is clear of our path", "the pedestrian has crossed"),
            "bicycle": ("there is enough room behind the cyclist", "the cyclist has moved on"),
            "emergency": ("the emergency vehicle has passed", "the emergency vehicle is out of the way"),
            "red_light": ("the red light ahead is still far", "there is room before the red light"),
            "yellow_light": ("there is room before the yellow light", "the yellow light ahead is still far"),
            "stop_sign": ("we have waited at the stop sign", "the stop sign has been obeyed"),
            "other": ("there is still room before {obj}", "{obj} is still far enough ahead"),
            "bypass": (
                "the {side} lane is clear to go around {obj}",
                "there is room in the {side} lane to pass {obj}",
            ),
        },
        applies=frozenset(
            {SpeedAction.START, SpeedAction.ACCELERATE, SpeedAction.KEEP, SpeedAction.KEEP_REDUCED}
        ),
    ),
}


# ----------------------------------------------------------------------------------- canonical phrasing
def _phrasing_map() -> dict[str, str]:
    """Every phrasing of the commentary's tables (route / speed actions, reasons with their objects, the
    takeover openers) -> the table's first one."""
    out: dict[str, str] = {}

    def add(options: Sequence[str], objects: Sequence[str] = ("",)) -> None:
        for option in options:
            for obj in objects:
                variant, canonical = option.format(obj=obj), options[0].format(obj=objects[0])
                # a phrasing in two tables ("to let the emergency vehicle pass": yielding, or giving way on
                # a collision course) keeps the first table's canonical one: the two mean the same
                out.setdefault(variant, canonical)
                out.setdefault(_cap(variant), _cap(canonical))

    tables = [*ROUTE_PHRASES.values(), *SPEED_PHRASES.values(), *SLOW_REASONS.values(), YIELD_REASONS,
              TURN_REASONS, JUNCTION_REASONS, CLEAR_REASONS, STUCK_REASONS]  # fmt: skip
    for options in tables:
        add(options)
    for kind, objects in OBJECTS.items():
        add(BYPASS_REASONS, objects)
        add(CONFLICT_REASONS, CONFLICT_OBJECTS.get(kind, objects))
    for enh in ENHANCEMENTS.values():
        add(enh.openers)
        add([o[:1].lower() + o[1:] for o in enh.openers])
    return {k: v for k, v in out.items() if k != v}


@functools.cache
def _phrasing_pattern() -> tuple[re.Pattern[str], dict[str, str]]:
    phrasings = _phrasing_map()
    return re.compile("|".join(re.escape(k) for k in sorted(phrasings, key=len, reverse=True))), phrasings


def spoken_speed_action(text: str) -> SpeedAction | None:
    """The speed action a "<route sentence>. <speed phrasing>..." commentary says (None: another form,
    such as takeover and instruction answers)."""
    _, sep, rest = text.partition(". ")
    if not sep:
        return None
    return next((a for a, ps in SPEED_PHRASES.items() for p in ps if rest.startswith(p)), None)


def canonical_commentary(text: str) -> str:
    """The commentary with every phrasing replaced by one canonical phrasing, its template's first:
    "Keep following the lane. Reduce speed to keep a safe distance to the cyclist." -> "Follow the route.
    Decelerate to stay behind the cyclist." Takeover labels' clauses and sentence forms keep theirs.

    Why (`train.canonical_language`): a small model spreads the probability of one decision over the
    decision's phrasings, and greedy decoding then favours the decision whose phrasings share a first
    word with another's: "Maintain" / "Keep" start both "Maintain speed" and "Maintain the reduced
    speed", while "Decelerate" / "Slow down" / "Reduce speed" each start with their own."""
    pattern, phrasings = _phrasing_pattern()
    return pattern.sub(lambda m: phrasings[m.group(0)], text)


def trigger_key(trigger: str) -> str:
    """Canonical trigger name: lower case without separators or a "trigger" suffix, so "Follow",
    "FollowTrigger" and "follow_trigger" are all "follow"; "too_fast" and "TooFastTrigger" "toofast"."""
    k = "".join(ch for ch in trigger.lower() if ch.isalnum())
    if k.endswith("trigger") and len(k) > len("trigger"):
        k = k[: -len("trigger")]
    return k


def register_enhancement(trigger: str, enhancement: Enhancement) -> None:
    """Add (or replace) the enhanced wording of a trigger type, e.g. for a user trigger."""
    ENHANCEMENTS[trigger_key(trigger)] = enhancement


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def enhanced(state: ExpertState, trigger: str, rng: np.random.Generator | int | None = None) -> str:
    """TakeVLA's enhanced label: urgent, causal wording for the trigger type, naming the cause.

    Falls back to `commentary(state, rng)` for a trigger without registered wording, or when the
    expert's speed action does not fit the trigger (a Follow or Collision while the expert accelerates or
    keeps its full speed, a Restart while it stays stopped).
    """
    g = _as_rng(rng)
    enh = ENHANCEMENTS.get(trigger_key(trigger))
    parts = describe(state)
    if enh is None or (enh.applies is not None and parts.speed not in enh.applies):
        return commentary(state, g)
    kind = parts.cause if parts.reason in ("bypass", "yield") else _state_cause(state)
    side = "left" if parts.route == RouteAction.CHANGE_LANE_LEFT else "right"
    if parts.reason in ("bypass", "conflict") and parts.reason in enh.clauses:
        options = enh.clauses[parts.reason]
    elif kind is not None and kind in enh.clauses:
        options = enh.clauses[kind]
    elif kind is not None:
        options = enh.clauses.get("other", ("{obj} is in our path",))
    else:
        options = enh.clauses.get("none", ("the situation ahead demands it",))
    opener = _pick(enh.openers, g)
    obj = _conflict_object(kind or "", g) if parts.reason == "conflict" else _object(kind or "", g)
    clause = _pick(options, g).format(obj=obj, side=side)
    fmt = _pick(enh.formats, g)
    low = opener[:1].lower() + opener[1:]
    return fmt.format(opener=low, Opener=_cap(opener), clause=clause, Clause=_cap(clause))


# ----------------------------------------------------------------------------------- generator
class LabelGenerator:
    """Deterministic labeller: the same seed (and tick) gives the same text.

    With `tick` given, the phrasing is drawn from `default_rng([seed, tick, salt])` (salt separates the
    commentary from the enhanced label), so labels do not depend on labelling order. Without a tick the
    generator's own stream (seeded by `seed`) is used.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._stream = np.random.default_rng(self.seed)

    def rng(self, tick: int | None = None, salt: str = "") -> np.random.Generator:
        if tick is None:
            return self._stream
        return np.random.default_rng([self.seed & 0xFFFFFFFF, int(tick), zlib.crc32(salt.encode())])

    def commentary(self, state: ExpertState, tick: int | None = None) -> str:
        return commentary(state, self.rng(tick, "commentary"))

    def enhanced(self, state: ExpertState, trigger: str, tick: int | None = None) -> str:
        return enhanced(state, trigger, self.rng(tick, "enhanced:" + trigger_key(trigger)))

    def takeover_label(self, state: ExpertState, trigger: str, is_pre: bool, tick: int) -> str:
        """The label of one takeover-segment frame (`envs.takeover.TakeoverCollector`'s labeler):
        the enhanced label of `state` for `trigger`, drawn with `tick`. The collector passes, for every
        pre-takeover frame, the expert's state and tick at the trigger (one label for the whole pre-takeover
        run, as `pre_takeover_labels`), and for a takeover frame its own state and tick; where the
        trigger's wording no longer fits the expert (it has stopped braking), that is the commentary."""
        del is_pre  # the state and tick given already say which frame the label is for
        return self.enhanced(state, trigger, tick)

    def pre_takeover_labels(
        self, state: ExpertState, trigger: str, trigger_tick: int, n_pre: int
    ) -> list[str]:
        """Labels for the T_pre frames before a trigger: the enhanced label of the expert's state at the
        trigger, one phrasing for the whole segment (drawn with the trigger tick)."""
        return [self.enhanced(state, trigger, trigger_tick)] * int(n_pre)


__all__ = [
    "CAUSE_KINDS",
    "CONFLICT_REASONS",
    "ENHANCEMENTS",
    "OBJECTS",
    "ROUTE_PHRASES",
    "SLOW_REASONS",
    "SPEED_PHRASES",
    "Enhancement",
    "LabelGenerator",
    "LabelParts",
    "RouteAction",
    "SpeedAction",
    "cause_kind",
    "commentary",
    "describe",
    "enhanced",
    "register_enhancement",
    "route_action",
    "speed_action",
    "trigger_key",
]
