"""The 44 Bench2Drive scenario types: what each is, which abilities it scores, and whether it is implemented.

Abilities follow Bench2Drive's ability benchmark (v0.0.3): a route counts towards every ability its
scenario type belongs to; for Traffic Signs it counts only if the ego got past the junction without a
red-light or stop-sign infraction (`envs.infractions` applies that rule). Bench2Drive's table spells
three names differently from scenario-runner (ParkingCrossingPedestrain, VehicleOpenDoorTwoWays,
MergeIntoSlowTraffic); the catalog uses the scenario-runner names, which are the ones in route files.
"""

from __future__ import annotations

from dataclasses import dataclass

MERGING = "Merging"
OVERTAKING = "Overtaking"
EMERGENCY_BRAKE = "Emergency Brake"
GIVE_WAY = "Give Way"
TRAFFIC_SIGNS = "Traffic Signs"
ABILITIES = (MERGING, OVERTAKING, EMERGENCY_BRAKE, GIVE_WAY, TRAFFIC_SIGNS)


@dataclass(frozen=True)
class ScenarioType:
    name: str
    abilities: tuple[str, ...]
    description: str


def _t(name: str, abilities: tuple[str, ...], description: str) -> ScenarioType:
    return ScenarioType(name, abilities, description)


_M, _O, _E, _G, _T = MERGING, OVERTAKING, EMERGENCY_BRAKE, GIVE_WAY, TRAFFIC_SIGNS

BENCH2DRIVE_TYPES: tuple[ScenarioType, ...] = (
    # Overtaking
    _t("Accident", (_O,), "Crashed vehicles and a police car with warning cones block the ego lane; change lanes."),
    _t("AccidentTwoWays", (_O,), "Accident in the ego lane on a two-way road: pass through the opposite lane "
       "between oncoming vehicles."),
    _t("ConstructionObstacle", (_O,), "A construction zone (cones, warning sign) blocks the ego lane."),
    _t("ConstructionObstacleTwoWays", (_O,), "Construction zone on a two-way road: pass using the opposite lane."),
    _t("HazardAtSideLane", (_O,), "Slow bicycles ride at the right edge of the ego lane; overtake them."),
    _t("HazardAtSideLaneTwoWays", (_O,), "Slow bicycles at the lane edge on a two-way road: overtake through the "
       "opposite lane."),
    _t("ParkedObstacle", (_O,), "A parked vehicle with a warning triangle blocks the ego lane."),
    _t("ParkedObstacleTwoWays", (_O,), "A parked vehicle blocks the ego lane on a two-way road."),
    _t("VehicleOpensDoorTwoWays", (_O,), "A parked vehicle opens its door into the ego lane on a two-way road."),
    # Merging
    _t("CrossingBicycleFlow", (_M, _T), "A flow of bicycles crosses the ego's path on a bike lane at a junction."),
    _t("EnterActorFlow", (_M, _T), "Merge into a flow of vehicles on the target lane (junction entry)."),
    _t("HighwayExit", (_M,), "Cross a flow of vehicles to reach a highway exit."),
    _t("InterurbanActorFlow", (_M,), "Turn left across a flow of oncoming vehicles on an interurban road."),
    _t("HighwayCutIn", (_M,), "A vehicle from an on-ramp cuts into the ego lane on the highway."),
    _t("InterurbanAdvancedActorFlow", (_M,), "Enter an interurban road crossing two flows of vehicles."),
    _t("MergerIntoSlowTraffic", (_M,), "Merge into a slow, dense flow on the target road."),
    _t("MergerIntoSlowTrafficV2", (_M,), "Merge into slow traffic on the highway after an on-ramp."),
    _t("NonSignalizedJunctionLeftTurn", (_M, _T), "Turn left at an unsignalised junction across oncoming flow."),
    _t("NonSignalizedJunctionRightTurn", (_M, _T), "Turn right at an unsignalised junction into a flow from the left."),
    _t("NonSignalizedJunctionLeftTurnEnterFlow", (_M, _T), "Turn left at an unsignalised junction into a "
       "flow on the target road."),
    _t("ParkingExit", (_M,), "The ego starts parked between two vehicles and merges into traffic."),
    _t("SequentialLaneChange", (_M,), "Several lane changes in sequence to follow the route."),
    _t("SignalizedJunctionLeftTurn", (_M, _T), "Turn left at a signalised junction, yielding to oncoming flow."),
    _t("SignalizedJunctionRightTurn", (_M, _T), "Turn right at a signalised junction into a flow from the left."),
    _t("SignalizedJunctionLeftTurnEnterFlow", (_M, _T), "Turn left at a signalised junction into a flow on the "
       "target road."),
    # Emergency brake
    _t("BlockedIntersection", (_E, _T), "A vehicle stops in the junction right after the ego's turn."),
    _t("DynamicObjectCrossing", (_E,), "A pedestrian or bicycle hidden behind a blocker crosses in front of the ego."),
    _t("HardBreakRoute", (_E,), "The traffic ahead brakes hard."),
    _t("OppositeVehicleTakingPriority", (_E, _T), "A vehicle from a crossing road takes priority at an "
       "unsignalised junction."),
    _t("OppositeVehicleRunningRedLight", (_E, _T), "A vehicle from a crossing road runs its red light."),
    _t("ParkingCutIn", (_E,), "A parked vehicle pulls out of a parking spot into the ego lane."),
    _t("PedestrianCrossing", (_E, _T), "A group of pedestrians crosses the road at a junction."),
    _t("ParkingCrossingPedestrian", (_E,), "A pedestrian steps out between parked cars into the ego lane."),
    _t("StaticCutIn", (_E,), "A vehicle from a queue in the side lane cuts in in front of the ego."),
    _t("VehicleTurningRoute", (_E, _T), "A bicycle crosses the road the ego turns into."),
    _t("VehicleTurningRoutePedestrian", (_E, _T), "A pedestrian crosses the road the ego turns into."),
    _t("ControlLoss", (_E,), "The ego loses control for a moment (road debris)."),
    # Give way
    _t("InvadingTurn", (_G,), "Oncoming vehicles cut the bend, invading the ego lane; keep to the right."),
    _t("YieldToEmergencyVehicle", (_G,), "An emergency vehicle approaches from behind; let it pass."),
    # Traffic signs
    _t("T_Junction", (_T,), "Cross a T junction obeying its light or stop sign (no scenario actors)."),
    _t("VanillaNonSignalizedTurn", (_T,), "Turn at an unsignalised junction (no scenario actors)."),
    _t("VanillaSignalizedTurnEncounterGreenLight", (_T,), "Turn at a signalised junction whose light is green."),
    _t("VanillaSignalizedTurnEncounterRedLight", (_T,), "Turn at a signalised junction whose light is red."),
    _t("VanillaNonSignalizedTurnEncounterStopsign", (_T,), "Turn at a stop-sign junction."),
)

TYPES_BY_NAME: dict[str, ScenarioType] = {t.name: t for t in BENCH2DRIVE_TYPES}
assert len(TYPES_BY_NAME) == 44


def abilities_of(type_name: str) -> tuple[str, ...]:
    """Abilities a scenario type scores ((), for a type outside Bench2Drive's 44)."""
    t = TYPES_BY_NAME.get(type_name)
    return t.abilities if t else ()


def catalog_rows() -> list[dict]:
    """One row per Bench2Drive type: name, abilities, implemented, description, differences from CARLA."""
    from envs.scenarios.base import SCENARIOS, load_library

    load_library()
    rows = []
    for t in BENCH2DRIVE_TYPES:
        cls = SCENARIOS.get(t.name)
        rows.append(
            {
                "type": t.name,
                "abilities": list(t.abilities),
                "implemented": cls is not None,
                "description": t.description,
                "differs_from_carla": (cls.differs_from_carla if cls is not None else ""),
            }
        )
    return rows
