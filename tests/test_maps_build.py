"""Tests for envs.maps.build: procedural maps, OpenDRIVE conversion, caching and map specs."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, deque
from pathlib import Path

import pytest
import sumolib

from envs.maps import build as mb
from envs.maps.build import MapError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CARLA_MAPS = SHARED_DATA / "carla" / "maps"

# A straight 100 m OpenDRIVE road starting at (10, 20) heading east: one driving lane each way plus a
# sidewalk on the right of the forward direction; no signals.
MINI_XODR = """<?xml version="1.0" standalone="yes"?>
<OpenDRIVE>
  <header revMajor="1" revMinor="4" name="mini" version="1"/>
  <road name="r" length="{length}" id="7" junction="-1">
    <link/>
    <planView>
      <geometry s="0.0" x="10.0" y="20.0" hdg="0.0" length="{length}"><line/></geometry>
    </planView>
    <lanes>
      <laneSection s="0.0">
        <left>
          <lane id="1" type="driving"><link/><width sOffset="0" a="3.5" b="0" c="0" d="0"/></lane>
        </left>
        <center><lane id="0" type="none" level="false"><link/></lane></center>
        <right>
          <lane id="-1" type="driving"><link/><width sOffset="0" a="3.5" b="0" c="0" d="0"/></lane>
          <lane id="-2" type="sidewalk"><link/><width sOffset="0" a="2.0" b="0" c="0" d="0"/></lane>
        </right>
      </laneSection>
    </lanes>
  </road>
</OpenDRIVE>
"""

# (start edge, end edge) pairs far apart in each procedural map (default parameters).
FAR_ROUTES = {
    "urban_grid": [("W0toJ0_0", "J3_3toE3"), ("N0toJ3_0", "J0_3toS3"), ("E1toJ1_3", "J2_0toW2")],
    "highway": [("main_in", "main_out"), ("on_ramp", "main_out"), ("main_in", "off_ramp")],
    "rural": [("main_a", "main_b"), ("-main_b", "-main_a"), ("-side", "main_b"), ("main_a", "side")],
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache, even through default arguments."""
    monkeypatch.setenv("TAKEOVER_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    cache = tmp_path_factory.mktemp("cache")
    return {name: mb.build_procedural(name, cache_dir=cache) for name in mb.PROCEDURAL_MAPS}


def _read(path: Path) -> sumolib.net.Net:
    return sumolib.net.readNet(str(path), withInternal=True)


def _reachable(net: sumolib.net.Net, start: str, vclass: str = "passenger") -> set[str]:
    seen, todo = {start}, deque([start])
    while todo:
        edge = net.getEdge(todo.popleft())
        for nxt in edge.getOutgoing():
            if nxt.allows(vclass) and nxt.getID() not in seen:
                seen.add(nxt.getID())
                todo.append(nxt.getID())
    return seen


def _write_mini(path: Path, length: float = 100.0) -> Path:
    path.write_text(MINI_XODR.format(length=length))
    return path


# -------------------------------------------------------------------------------------------------
# netconvert discovery


def test_netconvert_binary_found():
    exe = Path(mb.netconvert_binary())
    assert exe.is_file() and os.access(exe, os.X_OK)


def test_netconvert_binary_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sumo", None)  # `import sumo` now raises ImportError
    monkeypatch.delenv("SUMO_HOME", raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(MapError, match="pip install eclipse-sumo"):
        mb.netconvert_binary()


# -------------------------------------------------------------------------------------------------
# Procedural maps


def test_registry_has_descriptions():
    assert set(mb.PROCEDURAL_MAPS) == {"urban_grid", "highway", "rural"}
    for spec in mb.PROCEDURAL_MAPS.values():
        assert spec.description and "\n" not in spec.description


@pytest.mark.parametrize("name", sorted(FAR_ROUTES))
def test_procedural_map_loads_and_is_routable(built, name):
    net = _read(built[name])
    assert len(net.getEdges(withInternal=False)) > 0
    for start, end in FAR_ROUTES[name]:
        path, cost = net.getShortestPath(net.getEdge(start), net.getEdge(end), vClass="passenger")
        assert path, f"no route {start} -> {end} in {name}"
        assert cost > 150.0


def test_urban_grid_features(built):
    net = _read(built["urban_grid"])
    types = Counter(n.getType() for n in net.getNodes())
    assert len(net.getTrafficLights()) == types["traffic_light"] == 8
    assert types["allway_stop"] == 4 and types["priority_stop"] == 4
    streets = [e for e in net.getEdges(withInternal=False)]
    for e in streets:
        assert e.getLaneNumber() == 2  # sidewalk + one driving lane
        assert e.getLane(0).allows("pedestrian") and not e.getLane(0).allows("passenger")
        assert e.getLane(1).allows("passenger") and e.getSpeed() == pytest.approx(13.89)
        assert net.getEdge(f"{e.getToNode().getID()}to{e.getFromNode().getID()}")  # two-way
    crossings = [e for e in net.getEdges(withInternal=True) if e.getFunction() == "crossing"]
    assert len(crossings) >= 4 * 16  # every grid junction has crossings over all four arms
    # Every street can reach every other (U-turns at the dead ends).
    assert _reachable(net, "W0toJ0_0") == {e.getID() for e in streets}


def test_urban_grid_params_and_determinism(tmp_path):
    a = mb.build_procedural("urban_grid", cache_dir=tmp_path, rows=2, cols=3, lanes=2, block=100.0)
    b = mb.build_procedural("urban_grid", cache_dir=tmp_path / "other", rows=2, cols=3, lanes=2, block=100.0)
    assert a.name == b.name
    body = [p.read_text().split("-->", 1)[1] for p in (a, b)]  # the header comment has a timestamp
    assert body[0] == body[1]
    net = _read(a)
    assert net.getEdge("J0_0toJ0_1").getLaneNumber() == 3
    x0, x1 = (net.getNode(j).getCoord()[0] for j in ("J0_0", "J0_1"))
    assert x1 - x0 == pytest.approx(100.0)
    assert a != mb.build_procedural("urban_grid", cache_dir=tmp_path)


def test_highway_features(built):
    net = _read(built["highway"])
    main = ["main_in", "main_merge", "main_mid", "main_diverge", "main_out"]
    lanes = [net.getEdge(e).getLaneNumber() for e in main]
    assert lanes == [3, 4, 3, 4, 3]
    assert net.getEdge("main_in").getSpeed() == pytest.approx(33.33)
    assert not net.getLane("main_in_0").allows("pedestrian") and net.getLane("main_in_0").allows("passenger")
    assert sum(net.getEdge(e).getLength() for e in main) == pytest.approx(2000.0, abs=60.0)
    # The acceleration lane ends; the ramp feeds it; the deceleration lane feeds the exit.
    assert net.getLane("main_merge_0").getOutgoing() == []
    feeding = [lane.getID() for lane in net.getLane("main_merge_0").getIncoming()]
    assert [lane for lane in feeding if not lane.startswith(":")] == ["on_ramp_0"]
    assert [c.getToLane().getID() for c in net.getLane("main_diverge_0").getOutgoing()] == ["off_ramp_0"]
    rev = net.getEdge("reverse")
    assert rev.getLaneNumber() == 3 and rev.getShape()[0][0] > rev.getShape()[-1][0]  # westbound


def _min_radius(shape: list[tuple[float, float]]) -> float:
    radius = math.inf
    for (x0, y0), (x1, y1), (x2, y2) in zip(shape, shape[1:], shape[2:], strict=False):
        a, b, c = math.dist((x0, y0), (x1, y1)), math.dist((x1, y1), (x2, y2)), math.dist((x0, y0), (x2, y2))
        area2 = abs((x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0))
        if area2 > 1e-9:
            radius = min(radius, a * b * c / (2 * area2))
    return radius


def test_rural_features(built):
    net = _read(built["rural"])
    edges = {e.getID(): e for e in net.getEdges(withInternal=False)}
    assert set(edges) == {"main_a", "-main_a", "main_b", "-main_b", "side", "-side"}
    for eid, e in edges.items():
        assert e.getLaneNumber() == 1
        rev = edges[eid[1:] if eid.startswith("-") else "-" + eid]
        assert (rev.getFromNode(), rev.getToNode()) == (e.getToNode(), e.getFromNode())
    assert edges["main_a"].getSpeed() == pytest.approx(19.44)
    assert edges["main_a"].getLength() + edges["main_b"].getLength() == pytest.approx(2000.0, abs=80.0)
    shape = edges["main_a"].getLane(0).getShape() + edges["main_b"].getLane(0).getShape()
    assert 120.0 < _min_radius(shape) < 1000.0  # curvy, but drivable at 70 km/h
    t = net.getNode("T")
    assert t.getType() == "priority"
    incoming = sorted(e.getID() for e in t.getIncoming() if e.getFunction() == "")
    assert incoming == ["-main_b", "-side", "main_a"]
    assert net.getEdge("-side").getPriority() < net.getEdge("main_a").getPriority()


@pytest.mark.parametrize("name", sorted(FAR_ROUTES))
def test_simulation_runs_on_procedural_map(built, name):
    import libsumo

    libsumo.start(["sumo", "-n", str(built[name]), "--no-step-log", "--begin", "0", "--no-warnings"])
    try:
        for i, (start, end) in enumerate(FAR_ROUTES[name]):
            route = libsumo.simulation.findRoute(start, end)
            assert route.edges, (start, end)
            libsumo.route.add(f"r{i}", list(route.edges))
            for k in range(3):
                libsumo.vehicle.add(f"v{i}_{k}", f"r{i}", depart=str(5 * k), departLane="best")
        if name == "urban_grid":
            libsumo.person.add("walker", "W0toJ0_0", 5.0)
            walk = libsumo.simulation.findIntermodalRoute("W0toJ0_0", "J1_1toJ1_2")
            libsumo.person.appendWalkingStage("walker", list(walk[0].edges), 10.0)
        moved = 0.0
        for _ in range(200):
            libsumo.simulationStep()
            moved = max([moved, *(libsumo.vehicle.getDistance(v) for v in libsumo.vehicle.getIDList())])
        assert moved > 50.0
        assert libsumo.simulation.getCollidingVehiclesNumber() == 0
        if name == "urban_grid":
            assert libsumo.person.getLanePosition("walker") >= 0.0
    finally:
        libsumo.close()


def test_unknown_procedural_map_lists_valid_names(tmp_path):
    with pytest.raises(MapError, match=r"highway.*rural.*urban_grid"):
        mb.build_procedural("moon_base", cache_dir=tmp_path)


def test_bad_procedural_params(tmp_path):
    with pytest.raises(MapError, match="rows"):
        mb.build_procedural("urban_grid", cache_dir=tmp_path, rowz=3)
    with pytest.raises(MapError, match="lanes"):
        mb.build_procedural("urban_grid", cache_dir=tmp_path, lanes=7)


# -------------------------------------------------------------------------------------------------
# Caching


def _no_subprocess(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError(f"netconvert ran again: {args}")

    monkeypatch.setattr(subprocess, "run", boom)


def test_procedural_cache_hit_does_not_rerun(tmp_path, monkeypatch):
    first = mb.build_procedural("rural", cache_dir=tmp_path)
    assert first.parent == tmp_path / "nets" and first.with_name(first.name[:-8] + ".log").is_file()
    mtime = first.stat().st_mtime_ns
    _no_subprocess(monkeypatch)
    assert mb.build_procedural("rural", cache_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == mtime


def test_default_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TAKEOVER_CACHE", str(tmp_path / "envcache"))
    assert mb.build_procedural("rural").parent == tmp_path / "envcache" / "nets"


def test_opendrive_cache_and_reconvert(tmp_path, monkeypatch):
    xodr = _write_mini(tmp_path / "mini.xodr")
    cache = tmp_path / "cache"
    first = mb.convert_opendrive(xodr, cache_dir=cache)
    log = first.with_name(first.name[:-8] + ".log")
    assert "netconvert" in log.read_text()
    with monkeypatch.context() as m:
        _no_subprocess(m)
        assert mb.convert_opendrive(xodr, cache_dir=cache) == first
    _write_mini(xodr, length=150.0)
    second = mb.convert_opendrive(xodr, cache_dir=cache)
    assert second != first and first.is_file()
    assert _read(second).getEdge("-7").getLength() == pytest.approx(150.0, abs=1.0)


def test_opendrive_keeps_net_offset_convention(tmp_path):
    """CARLA (x, y) -> SUMO (x + ox, -y + oy): OpenDRIVE y is north, CARLA's y is south."""
    net = _read(mb.convert_opendrive(_write_mini(tmp_path / "mini.xodr"), cache_dir=tmp_path))
    ox, oy = net.getLocationOffset()
    assert (ox, oy) != (0.0, 0.0)  # normalisation kept
    # Forward lane (OpenDRIVE lane -1) centre at s=50: OpenDRIVE (60, 18.25) -> CARLA (60, -18.25).
    lane = net.getLane("-7_1")
    assert lane.allows("passenger") and net.getLane("-7_0").allows("pedestrian")
    cx, cy = 60.0, -18.25
    x, y = sumolib.geomhelper.positionAtShapeOffset(lane.getShape(), 50.0)
    assert (x, y) == pytest.approx((cx + ox, -cy + oy), abs=0.05)


def test_failed_conversion_leaves_no_cache_entry(tmp_path):
    bad = tmp_path / "bad.xodr"
    bad.write_text('<OpenDRIVE><header revMajor="1" revMinor="4"/><road id="1" length="abc"/></OpenDRIVE>')
    with pytest.raises(MapError) as err:
        mb.convert_opendrive(bad, cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert str(bad) in msg and "Error" in msg and "abc" in msg  # quotes netconvert's error lines
    nets = tmp_path / "c" / "nets"
    assert not list(nets.glob("*.net.xml"))
    assert not [p for p in nets.iterdir() if p.name.startswith(".tmp")]


# -------------------------------------------------------------------------------------------------
# Errors and map specs


def test_missing_xodr(tmp_path):
    missing = tmp_path / "nope.xodr"
    with pytest.raises(MapError, match=r"nope\.xodr"):
        mb.convert_opendrive(missing, cache_dir=tmp_path)


def test_malformed_xml_names_file(tmp_path):
    bad = tmp_path / "broken.xodr"
    bad.write_text("<OpenDRIVE><road id='1'></OpenDRIVE")
    with pytest.raises(MapError, match=r"broken\.xodr.*not valid XML"):
        mb.convert_opendrive(bad, cache_dir=tmp_path)
    other = tmp_path / "other.xodr"
    other.write_text("<net/>")
    with pytest.raises(MapError, match=r"other\.xodr.*not an OpenDRIVE"):
        mb.convert_opendrive(other, cache_dir=tmp_path)


def test_resolve_map_specs(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    grid = mb.resolve_map("urban_grid", cache_dir=cache)
    assert grid == mb.build_procedural("urban_grid", cache_dir=cache)
    assert mb.resolve_map(str(grid), cache_dir=cache) == grid  # ready net, returned as is
    xodr = _write_mini(tmp_path / "mini.xodr")
    assert mb.resolve_map(str(xodr), cache_dir=cache) == mb.convert_opendrive(xodr, cache_dir=cache)
    with pytest.raises(MapError, match="not found"):
        mb.resolve_map(str(tmp_path / "gone.net.xml"), cache_dir=cache)
    with pytest.raises(MapError, match="urban_grid"):
        mb.resolve_map("atlantis", cache_dir=cache)
    maps = tmp_path / "maps"
    maps.mkdir()
    monkeypatch.setenv("TAKEOVER_MAPS_DIR", str(maps))
    with pytest.raises(MapError, match=re.escape(str(maps / "Town07.xodr"))):
        mb.resolve_map("Town07", cache_dir=cache)
    shutil.copy(xodr, maps / "Town07.xodr")
    assert _read(mb.resolve_map("Town07", cache_dir=cache)).getEdge("-7")


def test_default_maps_dir_is_beside_repo(monkeypatch):
    monkeypatch.delenv("TAKEOVER_MAPS_DIR", raising=False)
    assert mb.maps_dir() == Path(__file__).resolve().parents[2] / "shared" / "data" / "carla" / "maps"


# -------------------------------------------------------------------------------------------------
# CARLA towns (../shared/data)


def _town(name: str) -> Path:
    path = CARLA_MAPS / f"{name}.xodr"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


@pytest.mark.shared_data
@pytest.mark.parametrize(("town", "lights"), [("Town01", 16), ("Town04", 12)])
def test_carla_town_keeps_opendrive_signals(tmp_path, town, lights):
    net = _read(mb.convert_opendrive(_town(town), cache_dir=tmp_path))
    assert len(net.getTrafficLights()) == lights
    assert any(e.getFunction() == "crossing" for e in net.getEdges(withInternal=True))
    assert any(e.allows("pedestrian") and not e.allows("passenger") for e in net.getEdges())


@pytest.mark.shared_data
def test_carla_town03_gets_lights_but_not_on_roundabout(tmp_path):
    net = _read(mb.resolve_map(str(_town("Town03")), cache_dir=tmp_path))
    tls_nodes = [n for n in net.getNodes() if n.getType() == "traffic_light"]
    assert len(net.getTrafficLights()) == len(tls_nodes) == 20
    ox, oy = net.getLocationOffset()
    for n in tls_nodes:  # the roundabout sits around CARLA (0, 0), radius ~25 m
        x, y = n.getCoord()
        assert math.hypot(x - ox, -(y - oy)) > 40.0, n.getID()
