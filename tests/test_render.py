"""Map raster, front camera, bird's-eye view and video helpers on a tiny netconvert-built junction."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.maps.network import LaneGraph, load_lane_graph
from envs.render import (
    BEV_EGO_COLOR,
    BEV_KIND_COLORS,
    BevRenderer,
    FrontCamera,
    compose_frame,
    write_video,
)
from envs.render_map import MapClass, MapRaster
from envs.scene import (
    AgentKind,
    Agents,
    EgoState,
    LightState,
    Route,
    Scene,
    StopSigns,
    TrafficLights,
)

ARM = 150.0  # m, length of each junction arm

NODES = f"""<nodes>
  <node id="C" x="0" y="0" type="traffic_light"/>
  <node id="N" x="0" y="{ARM}" type="priority"/>
  <node id="S" x="0" y="-{ARM}" type="priority"/>
  <node id="E" x="{ARM}" y="0" type="priority"/>
  <node id="W" x="-{ARM}" y="0" type="priority"/>
</nodes>
"""
EDGES = (
    "<edges>\n"
    + "".join(
        f'  <edge id="{a}{b}" from="{a}" to="{b}" numLanes="2" speed="13.89"/>\n'
        for a, b in [
            ("S", "C"),
            ("C", "S"),
            ("N", "C"),
            ("C", "N"),
            ("E", "C"),
            ("C", "E"),
            ("W", "C"),
            ("C", "W"),
        ]
    )
    + "</edges>\n"
)


def _netconvert() -> str | None:
    local = Path(sys.executable).parent / "netconvert"
    return str(local) if local.exists() else shutil.which("netconvert")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[LaneGraph, MapRaster]:
    exe = _netconvert()
    if exe is None:
        pytest.skip("netconvert not available")
    d = tmp_path_factory.mktemp("net")
    (d / "n.nod.xml").write_text(NODES)
    (d / "e.edg.xml").write_text(EDGES)
    cmd = [
        exe,
        "--node-files",
        "n.nod.xml",
        "--edge-files",
        "e.edg.xml",
        "-o",
        "t.net.xml",
        "--sidewalks.guess",
        "--crossings.guess",
        "--no-warnings",
    ]
    subprocess.run(cmd, cwd=d, check=True, capture_output=True)
    lanes = load_lane_graph(d / "t.net.xml")
    return lanes, MapRaster.build(lanes, resolution=0.2)


def _drive_lane(lanes: LaneGraph, edge: str) -> int:
    """The rightmost drivable lane of `edge`."""
    cands = [i for i in range(len(lanes)) if lanes.edge_of_lane[i] == edge and lanes.drivable[i]]
    return min(cands, key=lambda i: lanes.lane_index[i])


def _route() -> Route:
    z = np.zeros(0)
    return Route(
        "r",
        np.zeros((0, 2)),
        z,
        z.astype(np.int8),
        z.astype(np.int32),
        z,
        z,
        np.zeros((0, 2)),
        z.astype(np.int8),
    )


def _agents(rows: list[tuple[int, tuple[float, float, float, float, float], float]]) -> Agents:
    n = len(rows)
    if not n:
        return Agents()
    return Agents(
        ids=[f"a{i}" for i in range(n)],
        kind=np.array([r[0] for r in rows], np.int8),
        box=np.array([r[1] for r in rows], np.float64),
        height=np.array([r[2] for r in rows]),
        velocity=np.zeros((n, 2)),
        speed=np.zeros(n),
        accel=np.zeros(n),
        color=np.zeros((n, 3), np.uint8),
    )


def _scene(lanes: LaneGraph, ego: EgoState, agents: Agents, lights: TrafficLights | None = None) -> Scene:
    return Scene(0, 0.0, ego, agents, lights or TrafficLights(), StopSigns(), _route(), lanes)


def _ego(lanes: LaneGraph, s: float = 40.0) -> tuple[EgoState, int]:
    lane = _drive_lane(lanes, "SC")
    x, y, yaw = lanes.position_on_lane(lane, s)
    return EgoState(x, y, yaw, 5.0), lane


def _ahead(ego: EgoState, forward: float, left: float = 0.0) -> tuple[float, float]:
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    return ego.x + forward * c - left * s, ego.y + forward * s + left * c


def _red_light(lanes: LaneGraph, raster: MapRaster, lane: int) -> TrafficLights:
    ex, ey = raster.lane_end[lane]
    yaw = raster.lane_end_yaw[lane]
    w = lanes.width[lane]
    pos = np.array([[ex + math.sin(yaw) * (w / 2 + 0.6), ey - math.cos(yaw) * (w / 2 + 0.6)]])
    return TrafficLights(
        tls_id=["C"],
        state=np.array([LightState.RED], np.int8),
        position=pos,
        stop_line=np.zeros((1, 2, 2)),
        from_lane=np.array([lane], np.int32),
        via_lane=np.array([-1], np.int32),
    )


# ------------------------------------------------------------------------------------ raster
def test_raster_marks_road_sidewalk_and_markings(world: tuple[LaneGraph, MapRaster]) -> None:
    lanes, raster = world
    assert raster.grid.dtype == np.uint8
    normal = np.where(lanes.drivable & ~lanes.is_internal)[0]
    centres = np.array(
        [lanes.position_on_lane(int(i), lanes.length[i] * f)[:2] for i in normal for f in (0.2, 0.5, 0.8)]
    )
    assert (raster.class_at(centres) == MapClass.ROAD).all()
    # 20 m beside the road (lanes of the south arm run along x ~ const): terrain
    lane = _drive_lane(lanes, "SC")
    x, y, _ = lanes.position_on_lane(lane, 50.0)
    assert raster.class_at(np.array([[x + 20.0, y], [x - 27.0, y]])).tolist() == [MapClass.TERRAIN] * 2
    side = np.where(lanes.is_sidewalk)[0]
    assert len(side)
    mids = np.array([lanes.position_on_lane(int(i), lanes.length[i] / 2)[:2] for i in side])
    assert (raster.class_at(mids) == MapClass.SIDEWALK).mean() > 0.9
    counts = np.bincount(raster.grid.ravel(), minlength=len(MapClass))
    for cls in (MapClass.CROSSING, MapClass.LANE_WHITE, MapClass.LANE_YELLOW, MapClass.STOP_LINE):
        assert counts[cls] > 0, cls.name
    # a stop line lies across the end of a signalised lane
    end = raster.lane_end[lane] - 0.35 * np.array(
        [math.cos(raster.lane_end_yaw[lane]), math.sin(raster.lane_end_yaw[lane])]
    )
    assert raster.class_at(end[None])[0] == MapClass.STOP_LINE


def test_raster_save_load_roundtrip(world: tuple[LaneGraph, MapRaster], tmp_path: Path) -> None:
    _, raster = world
    path = raster.save(tmp_path / "map.npz")
    back = MapRaster.load(path)
    assert np.array_equal(back.grid, raster.grid)
    assert back.resolution == raster.resolution
    assert np.allclose(back.origin, raster.origin)
    assert np.allclose(back.lane_end_yaw, raster.lane_end_yaw)


# ------------------------------------------------------------------------------------ camera
def test_camera_sky_above_road_below(world: tuple[LaneGraph, MapRaster]) -> None:
    lanes, raster = world
    ego, _ = _ego(lanes)
    cam = FrontCamera()
    img = cam.render(_scene(lanes, ego, Agents()), raster)
    assert img.shape == (128, 256, 3) and img.dtype == np.uint8
    top = img[:40].reshape(-1, 3).astype(int)
    assert (top[:, 2] > top[:, 0] + 30).all()  # blue sky
    bottom = img[110:, 112:144].reshape(-1, 3).astype(float)
    road = raster.palette[MapClass.ROAD].astype(float)
    assert np.abs(bottom.mean(axis=0) - road).max() < 20  # asphalt under the ego
    assert (np.ptp(bottom, axis=1) < 30).mean() > 0.9  # grey, not sky


def _diff_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.abs(a.astype(int) - b.astype(int)).sum(axis=2) > 30
    return np.where(d.any(axis=0))[0]


def test_camera_vehicle_ahead_is_centred_and_left_is_left(world: tuple[LaneGraph, MapRaster]) -> None:
    lanes, raster = world
    ego, _ = _ego(lanes)
    cam = FrontCamera()
    base = cam.render(_scene(lanes, ego, Agents()), raster)
    x, y = _ahead(ego, 15.0)
    ahead = cam.render(
        _scene(lanes, ego, _agents([(AgentKind.VEHICLE, (x, y, ego.yaw, 2.3, 1.0), 1.5)])), raster
    )
    cols = _diff_columns(ahead, base)
    assert len(cols) > 5
    assert abs(cols.mean() - cam.width / 2) < cam.width * 0.08
    u, v, depth = cam.project(_scene(lanes, ego, Agents()), np.array([[x, y, 0.75]]))[0]
    assert depth > 0 and abs(u - cols.mean()) < 4 and cam.height / 2 < v < cam.height
    x, y = _ahead(ego, 15.0, left=7.0)
    left = cam.render(
        _scene(lanes, ego, _agents([(AgentKind.VEHICLE, (x, y, ego.yaw, 2.3, 1.0), 1.5)])), raster
    )
    cols = _diff_columns(left, base)
    assert len(cols) > 3 and cols.max() < cam.width / 2


def test_camera_agent_behind_draws_nothing(world: tuple[LaneGraph, MapRaster]) -> None:
    lanes, raster = world
    ego, _ = _ego(lanes)
    cam = FrontCamera()
    base = cam.render(_scene(lanes, ego, Agents()), raster)
    x, y = _ahead(ego, -12.0)
    behind = cam.render(
        _scene(lanes, ego, _agents([(AgentKind.VEHICLE, (x, y, ego.yaw, 2.3, 1.0), 1.5)])), raster
    )
    assert np.array_equal(behind, base)
    # boxes straddling or containing the camera are clipped, not blown up
    rows = [
        (
            AgentKind.VEHICLE,
            (*_ahead(ego, -1.5, 2.2), ego.yaw, 4.0, 1.0),
            1.5,
        ),  # alongside, through the image plane
        (AgentKind.STATIC, (*_ahead(ego, -1.5), ego.yaw, 1.0, 1.0), 3.0),  # around the camera
        (AgentKind.EMERGENCY, (*_ahead(ego, 0.2, -2.0), ego.yaw + 0.4, 3.0, 1.2), 2.8),
    ]
    img = cam.render(_scene(lanes, ego, _agents(rows)), raster)
    assert img.shape == base.shape
    # the vehicle alongside covers the left edge of the image but not the right half
    assert not np.array_equal(img[:, :40], base[:, :40])


def test_camera_scene_with_pedestrian_and_red_light(
    world: tuple[LaneGraph, MapRaster], tmp_path: Path
) -> None:
    lanes, raster = world
    ego, lane = _ego(lanes, s=lanes.length[_drive_lane(lanes, "SC")] - 30.0)
    side = next(i for i in range(len(lanes)) if lanes.edge_of_lane[i] == "SC" and lanes.is_sidewalk[i])
    px, py, pyaw = lanes.position_on_lane(side, lanes.length[side] - 20.0)
    vx, vy = _ahead(ego, 15.0)
    agents = _agents(
        [
            (AgentKind.VEHICLE, (vx, vy, ego.yaw, 2.3, 1.0), 1.5),
            (AgentKind.PEDESTRIAN, (px, py, pyaw, 0.3, 0.3), 1.8),
        ]
    )
    lights = _red_light(lanes, raster, lane)
    scene = _scene(lanes, ego, agents, lights)
    cam, bev = FrontCamera(), BevRenderer()
    img = cam.render(scene, raster)
    red = (img[..., 0] > 200) & (img[..., 1] < 90) & (img[..., 2] < 90)
    assert red[: cam.height // 2].any()  # the lit lamp of the light facing us
    lights.state[:] = LightState.GREEN
    green = cam.render(scene, raster)
    assert not ((green[..., 0] > 200) & (green[..., 1] < 90) & (green[..., 2] < 90))[: cam.height // 2].any()
    lights.state[:] = LightState.RED
    b = bev.render(scene, raster)
    frame = compose_frame(img, b, ["tick 0", "speed 5.0 m/s  cmd LANEFOLLOW"])
    assert frame.dtype == np.uint8 and frame.shape[0] % 2 == 0 and frame.shape[1] % 2 == 0
    assert frame.shape[0] > img.shape[0] * 2
    from PIL import Image

    out = tmp_path / "sample.png"
    Image.fromarray(frame).save(out)
    assert out.exists() and out.stat().st_size > 1000


# --------------------------------------------------------------------------------------- BEV
def test_bev_ego_and_vehicle_ahead(world: tuple[LaneGraph, MapRaster]) -> None:
    lanes, raster = world
    ego, _lane = _ego(lanes)
    bev = BevRenderer(size=(192, 192), meters_per_pixel=0.25)
    vx, vy = _ahead(ego, 15.0)
    scene = _scene(lanes, ego, _agents([(AgentKind.VEHICLE, (vx, vy, ego.yaw, 2.3, 1.0), 1.5)]))
    img = bev.render(scene, raster)
    assert img.shape == (192, 192, 3) and img.dtype == np.uint8
    assert tuple(img[128, 96]) == tuple(BEV_EGO_COLOR.astype(np.uint8))
    assert tuple(img[127, 95]) == tuple(BEV_EGO_COLOR.astype(np.uint8))
    row, col = bev.world_to_pixel(scene, np.array([vx, vy]))
    assert abs(row - (128 - 15 / 0.25)) < 1e-6 and abs(col - 96) < 1e-6
    assert tuple(img[int(row), int(col)]) == tuple(BEV_KIND_COLORS[AgentKind.VEHICLE].astype(np.uint8))
    # the ego occupies only its own box: 3 m ahead of its centre is road or marking, not ego
    assert tuple(img[128 - 12 - 10, 96]) != tuple(BEV_EGO_COLOR.astype(np.uint8))


def test_scenario_kinds_drawn_in_their_own_colours(world: tuple[LaneGraph, MapRaster]) -> None:
    """Parked vehicles, cones and bicycles of scenarios are drawn in their kind's colour in the BEV and
    change the camera image where they stand."""
    lanes, raster = world
    ego, _lane = _ego(lanes)
    bev = BevRenderer(size=(192, 192), meters_per_pixel=0.25)
    rows = [
        (AgentKind.PARKED_VEHICLE, (*_ahead(ego, 12.0), ego.yaw, 2.3, 1.0), 1.5),
        (AgentKind.CONE, (*_ahead(ego, 6.0, -1.0), 0.0, 0.2, 0.2), 0.7),
        (AgentKind.BICYCLE, (*_ahead(ego, 20.0, 1.0), ego.yaw, 0.9, 0.35), 1.7),
    ]
    scene = _scene(lanes, ego, _agents(rows))
    img = bev.render(scene, raster)
    for kind, box, _ in rows:
        row, col = bev.world_to_pixel(scene, np.array(box[:2]))
        assert tuple(img[round(row), round(col)]) == tuple(BEV_KIND_COLORS[kind].astype(np.uint8))
    cam = FrontCamera()
    base = cam.render(_scene(lanes, ego, Agents()), raster)
    for row in rows:
        assert not np.array_equal(cam.render(_scene(lanes, ego, _agents([row])), raster), base), row[0]


def test_bev_route_and_light_stop_line(world: tuple[LaneGraph, MapRaster]) -> None:
    lanes, raster = world
    lane = _drive_lane(lanes, "SC")
    ego, _ = _ego(lanes, s=lanes.length[lane] - 20.0)
    s = np.arange(lanes.length[lane] - 20.0, lanes.length[lane], 0.1)
    pts = np.array([lanes.position_on_lane(lane, v)[:2] for v in s])
    n = len(pts)
    route = Route(
        "r",
        pts,
        np.full(n, ego.yaw),
        np.full(n, 4, np.int8),
        np.full(n, lane, np.int32),
        np.full(n, 13.9),
        s - s[0],
        pts[[0, -1]],
        np.array([4, 4], np.int8),
    )
    scene = Scene(0, 0.0, ego, Agents(), _red_light(lanes, raster, lane), StopSigns(), route, lanes)
    bev = BevRenderer()
    img = bev.render(scene, raster).astype(int)
    # route drawn ahead of the ego (violet tint: blue channel above red and green)
    ahead = img[128 - 40, 96]
    assert ahead[2] > ahead[1] + 40
    # stop line 20 m ahead (lane end) in red
    r_end = int(bev.world_to_pixel(scene, raster.lane_end[lane])[0])
    band = img[r_end - 3 : r_end + 3, 90:102]
    assert ((band[..., 0] > 200) & (band[..., 1] < 90)).any()


# ------------------------------------------------------------------------------------- video
def test_write_video(tmp_path: Path) -> None:
    frames = [np.full((64, 96, 3), i * 20, np.uint8) for i in range(5)]
    path = write_video(frames, tmp_path / "clip.mp4", fps=10)
    assert path.exists() and path.stat().st_size > 0
    assert path.suffix in (".mp4", ".gif")
    gif = write_video(frames, tmp_path / "clip.gif", fps=10)
    assert gif.suffix == ".gif" and gif.exists()


def test_camera_tolerates_missing_optional_arrays_and_pitch(world: tuple[LaneGraph, MapRaster]) -> None:
    lanes, raster = world
    ego, lane = _ego(lanes)
    x, y = _ahead(ego, 15.0)
    agents = Agents(
        ids=["a"], kind=np.array([AgentKind.VEHICLE], np.int8), box=np.array([[x, y, ego.yaw, 2.3, 1.0]])
    )  # height / color / velocity left empty: defaults by kind
    lights = _red_light(lanes, raster, lane)
    lights.from_lane = np.zeros(0, np.int32)  # no lane: the head faces the camera
    scene = _scene(lanes, ego, agents, lights)
    level = FrontCamera(supersample=1).render(scene, raster)
    assert _diff_columns(level, FrontCamera(supersample=1).render(_scene(lanes, ego, Agents()), raster)).size
    down = FrontCamera(pitch_deg=-10.0).render(scene, raster)
    sky = np.array([95, 145, 215])
    level_sky = (np.abs(level.astype(int) - sky).sum(axis=2) < 60).sum()
    down_sky = (np.abs(down.astype(int) - sky).sum(axis=2) < 60).sum()
    assert down_sky < level_sky
    BevRenderer().render(scene, raster)
