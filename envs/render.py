"""Fast software rendering of a `Scene`: a pinhole front camera, a bird's-eye view, and video helpers.

Both renderers sample a static `MapRaster` (built once per network, `envs.render_map`) and draw the
dynamic participants on top, all in Numba kernels so that a frame costs well under a millisecond or
two on one core.

Front camera model (`FrontCamera`), defaults chosen after the CARLA camera of TransFuser++/SimLingo
(1024x512, FOV 110 deg, mounted at x=-1.5 m, z=2.0 m, no pitch) scaled down to 256x128:
- mount (x forward, y left, z up) = (-1.5, 0.0, 2.0) m from the ego box centre on the ground;
- horizontal FOV 110 deg, square pixels (focal f = (W / 2) / tan(FOV / 2)), principal point at the
  image centre; pitch (deg, positive looks up) rotates about the camera's left axis; no roll;
- ground pixels: each pixel's ray (2x2 sub-samples by default) is intersected with the ground plane
  z = 0 once at construction; per frame the offsets are rotated into the world and looked up in the
  map raster (nearest cell per sub-sample; near pixels smaller than a map cell are bilinearly
  interpolated at the pixel centre instead; a faint hashed texture per cell), faded into a haze colour
  from `fog_start` to `max_distance`; rays above the horizon get a sky gradient;
- participants are 3D boxes standing on the ground (cars as a body plus a glass cabin, pedestrians as
  legs/torso/head, bicycles as frame plus rider, emergency vehicles red with a blue light bar,
  traffic lights as pole + housing + a lit lamp facing the controlled lane, stop signs as pole + red
  plate), back-face culled, clipped at the near plane, flat shaded per face and painted far to near.
  The ego itself is not drawn in its own camera.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numba
import numpy as np

from envs.render_map import BEV_PALETTE, N_CLASSES, MapClass, MapRaster
from envs.scene import AgentKind, LightState, Scene

# ------------------------------------------------------------------------------------ colours
# Default camera colours by AgentKind (Agents.color, when nonzero, overrides them).
KIND_COLORS = np.array(
    [
        (52, 88, 160),  # VEHICLE
        (190, 70, 140),  # PEDESTRIAN
        (30, 160, 160),  # BICYCLE
        (235, 125, 25),  # STATIC
        (220, 30, 30),  # EMERGENCY
        (110, 110, 120),  # PARKED_VEHICLE
        (250, 95, 10),  # CONE
    ],
    dtype=np.float64,
)
KIND_HEIGHTS = np.array([1.5, 1.8, 1.7, 1.0, 2.4, 1.5, 0.7])  # used when Agents.height is 0
LIGHT_COLORS = np.array([(255, 40, 30), (255, 190, 0), (40, 230, 90), (60, 60, 60)], dtype=np.float64)
SKY_TOP = np.array([95.0, 145.0, 215.0])
HAZE = np.array([196.0, 206.0, 216.0])

# Bird's-eye colours.
BEV_KIND_COLORS = np.array(
    [
        (60, 120, 255),  # VEHICLE
        (255, 90, 200),  # PEDESTRIAN
        (0, 220, 220),  # BICYCLE
        (255, 150, 0),  # STATIC
        (255, 40, 40),  # EMERGENCY
        (150, 150, 190),  # PARKED_VEHICLE
        (255, 230, 0),  # CONE
    ],
    dtype=np.float64,
)
BEV_EGO_COLOR = np.array([255.0, 255.0, 255.0])
BEV_ROUTE_COLOR = np.array([150.0, 90.0, 255.0])
BEV_LIGHT_COLORS = LIGHT_COLORS.copy()
BEV_LIGHT_COLORS[3] = (0, 0, 0)  # OFF: not drawn

# Per-class texture amplitudes for the camera (fine = per cell, coarse = 8x8-cell patches).
_NOISE_FINE = np.zeros(N_CLASSES, np.float64)
_NOISE_COARSE = np.zeros(N_CLASSES, np.float64)
_NOISE_FINE[[MapClass.TERRAIN, MapClass.ROAD, MapClass.SIDEWALK]] = (14.0, 7.0, 8.0)
_NOISE_COARSE[[MapClass.TERRAIN, MapClass.ROAD, MapClass.SIDEWALK]] = (22.0, 5.0, 6.0)

_PRIM_COLS = 12  # x, y, z0, yaw, half_length, half_width, height, r, g, b, emissive, sort key


def _empty2(n: int = 0) -> np.ndarray:
    return np.zeros((n, 2), np.float64)


# ================================================================================= front camera
class FrontCamera:
    """Pinhole RGB camera rigidly mounted on the ego. `render(scene, raster)` -> (H, W, 3) uint8."""

    def __init__(
        self,
        width: int = 256,
        height: int = 128,
        fov_deg: float = 110.0,
        mount: tuple[float, float, float] = (-1.5, 0.0, 2.0),
        pitch_deg: float = 0.0,
        max_distance: float = 100.0,
        fog_start: float = 35.0,
        supersample: int = 2,
        near: float = 0.05,
    ) -> None:
        if mount[2] <= 0.0:
            raise ValueError("camera must be mounted above the ground (mount z > 0)")
        self.width, self.height = int(width), int(height)
        self.fov_deg = float(fov_deg)
        self.mount = (float(mount[0]), float(mount[1]), float(mount[2]))
        self.pitch = math.radians(pitch_deg)
        self.max_distance = float(max_distance)
        self.fog_start = float(min(fog_start, max_distance))
        self.supersample = max(int(supersample), 1)
        self.near = float(near)
        self.focal = (self.width / 2.0) / math.tan(math.radians(self.fov_deg) / 2.0)
        self.cx, self.cy = self.width / 2.0, self.height / 2.0
        self._precompute()

    # ----------------------------------------------------------------------------- geometry
    def _precompute(self) -> None:
        h, w, n = self.height, self.width, self.supersample
        sub = (np.arange(n) + 0.5) / n
        su, sv = np.meshgrid(sub, sub)
        u = np.arange(w)[None, :, None] + su.ravel()[None, None, :]
        v = np.arange(h)[:, None, None] + sv.ravel()[None, None, :]
        # camera rays (forward, left, up) pitched into the level ego-yaw frame, cut with the ground
        gf, gl, dist = self._ground_point(u, v)
        fog = self._fog(dist)
        # ground footprint of each pixel (metres between neighbouring pixel centres' ground points): where
        # it is below a map cell the map is bilinearly interpolated at the pixel centre instead
        uc = np.arange(w)[None, :] + 0.5
        vc = np.arange(h)[:, None] + 0.5
        cf, cl, cd = self._ground_point(uc, vc)
        foot = np.full((h, w), np.inf)
        step_v = np.hypot(np.diff(cf, axis=0), np.diff(cl, axis=0))
        step_u = np.hypot(np.diff(cf, axis=1), np.diff(cl, axis=1))
        foot[:-1] = step_v
        foot[-1] = step_v[-1] if h > 1 else np.inf
        foot[:, :-1] = np.maximum(foot[:, :-1], step_u)
        foot[:, -1] = np.maximum(foot[:, -1], step_u[:, -1] if w > 1 else np.inf)
        foot = np.where(np.isfinite(cd), foot, np.inf)
        self._foot = np.ascontiguousarray(
            np.clip(np.nan_to_num(foot, nan=1e30, posinf=1e30), 0.0, 1e30), np.float32
        )
        self._cf = np.ascontiguousarray(np.where(np.isfinite(cd), cf, 0.0), np.float32)
        self._cl = np.ascontiguousarray(np.where(np.isfinite(cd), cl, 0.0), np.float32)
        self._cw = np.ascontiguousarray(self._fog(cd), np.float32)
        self._gf = np.ascontiguousarray(gf, np.float32)
        self._gl = np.ascontiguousarray(gl, np.float32)
        self._gw = np.ascontiguousarray(fog, np.float32)
        ground_rows = np.where((fog < 0.999).any(axis=(1, 2)))[0]
        self._row0 = int(ground_rows[0]) if len(ground_rows) else h
        # sky: gradient from SKY_TOP at the top of the image to HAZE at the horizon
        vc = np.arange(h) + 0.5
        elev = np.arctan2(-(vc - self.cy) / self.focal, 1.0) + self.pitch
        a = np.clip(elev / math.radians(35.0), 0.0, 1.0) ** 0.7
        sky = (1 - a)[:, None] * HAZE[None] + a[:, None] * SKY_TOP[None]
        self._base = np.ascontiguousarray(
            np.broadcast_to(sky[:, None, :], (h, w, 3)).round().astype(np.uint8)
        )

    def _ground_point(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ground hit (forward, left) relative to the camera's ground point, and its distance (inf: sky)."""
        u, v = np.broadcast_arrays(np.asarray(u, np.float64), np.asarray(v, np.float64))
        dl = -(u - self.cx) / self.focal
        du = -(v - self.cy) / self.focal
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        fwd = cp - du * sp
        up = sp + du * cp
        hits = up < -1e-9
        t = np.where(hits, self.mount[2] / np.where(hits, -up, 1.0), np.inf)
        gf = np.where(hits, t * fwd, 0.0)
        gl = np.where(hits, t * dl, 0.0)
        dist = np.where(hits, np.hypot(gf, gl), np.inf)
        return gf, gl, dist

    def _fog(self, dist: np.ndarray) -> np.ndarray:
        x = np.clip((dist - self.fog_start) / max(self.max_distance - self.fog_start, 1e-6), 0.0, 1.0)
        return np.where(np.isfinite(dist), x * x * (3 - 2 * x), 1.0)

    def pose(self, scene: Scene) -> tuple[float, float, float, float]:
        """World (x, y, z, yaw) of the camera for the scene's ego."""
        e = scene.ego
        c, s = math.cos(e.yaw), math.sin(e.yaw)
        mx, my, mz = self.mount
        return e.x + mx * c - my * s, e.y + mx * s + my * c, mz, e.yaw

    def project(self, scene: Scene, xyz: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> (N, 3) pixel (u, v, depth); depth <= 0 means behind the camera."""
        cam_x, cam_y, cam_z, yaw = self.pose(scene)
        p = np.atleast_2d(np.asarray(xyz, np.float64))
        dx, dy, dz = p[:, 0] - cam_x, p[:, 1] - cam_y, p[:, 2] - cam_z
        c, s = math.cos(yaw), math.sin(yaw)
        f, left = dx * c + dy * s, -dx * s + dy * c
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        xc = f * cp + dz * sp
        zc = -f * sp + dz * cp
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.cx - self.focal * left / xc
            v = self.cy - self.focal * zc / xc
        return np.stack([u, v, xc], axis=1)

    # ------------------------------------------------------------------------------- render
    def render(self, scene: Scene, raster: MapRaster, out: np.ndarray | None = None) -> np.ndarray:
        img = np.empty((self.height, self.width, 3), np.uint8) if out is None else out
        cam_x, cam_y, cam_z, yaw = self.pose(scene)
        c, s = math.cos(yaw), math.sin(yaw)
        _camera_ground(
            img,
            self._base,
            self._row0,
            self._gf,
            self._gl,
            self._gw,
            self._foot,
            self._cf,
            self._cl,
            self._cw,
            raster.grid,
            float(raster.origin[0]),
            float(raster.origin[1]),
            1.0 / raster.resolution,
            raster.palette.astype(np.float64),
            _NOISE_FINE,
            _NOISE_COARSE,
            HAZE,
            cam_x,
            cam_y,
            c,
            s,
        )
        prims = _scene_primitives(scene, raster, cam_x, cam_y, cam_z, yaw, self.max_distance + 10.0)
        if len(prims):
            _draw_boxes(
                img,
                prims,
                cam_x,
                cam_y,
                cam_z,
                c,
                s,
                math.cos(self.pitch),
                math.sin(self.pitch),
                self.focal,
                self.cx,
                self.cy,
                self.near,
                self.fog_start,
                self.max_distance,
                HAZE,
            )
        return img


def _scene_primitives(
    scene: Scene, raster: MapRaster, cam_x: float, cam_y: float, cam_z: float, yaw: float, radius: float
) -> np.ndarray:
    box, kind, height, color = _agent_arrays(scene)
    lights = scene.lights
    lpos = _fit(lights.position, -1, (2,), np.float64)
    m = len(lpos)
    lstate = _fit(lights.state, m, (), np.int64, fill=LightState.OFF)
    lyaw = _facing_yaw(raster, _fit(lights.from_lane, m, (), np.int64, fill=-1), lpos, cam_x, cam_y)
    signs = scene.stop_signs
    spos = _fit(signs.position, -1, (2,), np.float64)
    syaw = _facing_yaw(raster, _fit(signs.lane, len(spos), (), np.int64, fill=-1), spos, cam_x, cam_y)
    return _build_primitives(
        box,
        kind,
        height,
        color,
        lpos,
        lstate,
        lyaw,
        spos,
        syaw,
        cam_x,
        cam_y,
        cam_z,
        math.cos(yaw),
        math.sin(yaw),
        radius,
        KIND_COLORS,
        KIND_HEIGHTS,
        LIGHT_COLORS,
    )


def _fit(values: np.ndarray, n: int, tail: tuple[int, ...], dtype: type, fill: float = 0) -> np.ndarray:
    """`values` as a contiguous (n, *tail) array (n = -1: as many rows as given), padded with `fill` or cut,
    so that the Numba kernels never index past a shorter array of a malformed scene."""
    a = np.asarray(values if values is not None else np.zeros((0, *tail)), dtype)
    a = a.reshape(-1, *tail) if a.size else np.zeros((0, *tail), dtype)
    if n < 0 or len(a) == n:
        return np.ascontiguousarray(a)
    out = np.full((n, *tail), fill, dtype)
    k = min(n, len(a))
    out[:k] = a[:k]
    return out


def _agent_arrays(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(box (N, 5), kind (N,), height (N,), color (N, 3)) of the scene's agents, all with N = len(box)."""
    a = scene.agents
    box = _fit(a.box, -1, (5,), np.float64)
    n = len(box)
    return (
        box,
        _fit(a.kind, n, (), np.int64),
        _fit(a.height, n, (), np.float64),
        _fit(a.color, n, (3,), np.float64),
    )


def _facing_yaw(
    raster: MapRaster, lane: np.ndarray, pos: np.ndarray, cam_x: float, cam_y: float
) -> np.ndarray:
    """Heading a sign/light faces: against its lane's end direction (towards approaching traffic).

    Rows without a valid lane face the camera."""
    yaw = np.arctan2(cam_y - pos[:, 1], cam_x - pos[:, 0])
    lane = np.asarray(lane, np.int64)
    nl = len(raster.lane_end_yaw)
    if len(lane) == len(pos) and nl:
        ok = (lane >= 0) & (lane < nl)
        yaw = np.where(ok, raster.lane_end_yaw[np.clip(lane, 0, nl - 1)] + math.pi, yaw)
    return np.ascontiguousarray(yaw, np.float64)


# ================================================================================== bird's-eye
class BevRenderer:
    """Ego-centred, ego-facing-up bird's-eye RGB raster. `render(scene, raster)` -> (H, W, 3) uint8.

    The ego box centre sits at pixel row `ego_frac * H` (from the top) and column W / 2 (continuous
    pixel coordinates); one pixel is `meters_per_pixel` metres. Agents are drawn in kind colours
    (schematic: Agents.color is not used here), the route ahead as a line, and the stop lines of
    traffic lights coloured by their state.
    """

    def __init__(
        self,
        size: tuple[int, int] = (192, 192),
        meters_per_pixel: float = 0.25,
        ego_frac: float = 2.0 / 3.0,
        route_ahead_m: float = 80.0,
    ) -> None:
        self.height, self.width = int(size[0]), int(size[1])
        self.mpp = float(meters_per_pixel)
        self.ego_row = self.height * float(ego_frac)
        self.ego_col = self.width / 2.0
        self.route_ahead_m = float(route_ahead_m)
        self.palette = BEV_PALETTE.astype(np.float64)

    def world_to_pixel(self, scene: Scene, xy: np.ndarray) -> np.ndarray:
        """World points (..., 2) -> continuous (row, col) pixel coordinates (pixel centres at +0.5)."""
        e = scene.ego
        p = np.asarray(xy, np.float64)
        dx, dy = p[..., 0] - e.x, p[..., 1] - e.y
        c, s = math.cos(e.yaw), math.sin(e.yaw)
        f, left = dx * c + dy * s, -dx * s + dy * c
        return np.stack([self.ego_row - f / self.mpp, self.ego_col - left / self.mpp], axis=-1)

    def render(self, scene: Scene, raster: MapRaster, out: np.ndarray | None = None) -> np.ndarray:
        img = np.empty((self.height, self.width, 3), np.uint8) if out is None else out
        e = scene.ego
        box, kind, _, _ = _agent_arrays(scene)
        lights = scene.lights
        lstate = _fit(lights.state, -1, (), np.int64)
        m = len(lstate)
        stop = _fit(lights.stop_line, m, (2, 2), np.float64)
        lfrom = _fit(lights.from_lane, m, (), np.int64, fill=-1)
        route = scene.route
        if route is not None and len(route.points):
            step = max(round(0.5 * route.POINTS_PER_METER), 1)
            i0 = min(max(int(scene.route_index), 0), len(route.points) - 1)
            i1 = i0 + int(self.route_ahead_m * route.POINTS_PER_METER) + 1
            pts = np.ascontiguousarray(route.points[i0:i1:step], np.float64)
        else:
            pts = _empty2()
        _render_bev(
            img,
            raster.grid,
            float(raster.origin[0]),
            float(raster.origin[1]),
            1.0 / raster.resolution,
            self.palette,
            e.x,
            e.y,
            math.cos(e.yaw),
            math.sin(e.yaw),
            self.mpp,
            self.ego_row,
            self.ego_col,
            box,
            kind,
            BEV_KIND_COLORS,
            e.half_length,
            e.half_width,
            BEV_EGO_COLOR,
            pts,
            BEV_ROUTE_COLOR,
            stop,
            lstate,
            lfrom,
            raster.lane_end,
            raster.lane_end_yaw,
            raster.lane_width,
            BEV_LIGHT_COLORS,
        )
        return img


# ============================================================================ frames and video
def _text_block(lines: Sequence[str], width: int, line_h: int = 12) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    h = max(len(lines), 1) * line_h + 6
    im = Image.new("RGB", (width, h), (16, 16, 16))
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    for i, line in enumerate(lines):
        draw.text((4, 3 + i * line_h), str(line), fill=(235, 235, 235), font=font)
    return np.asarray(im, np.uint8)


def _resize_nearest(img: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = (np.arange(height) * img.shape[0] // height).clip(0, img.shape[0] - 1)
    cols = (np.arange(width) * img.shape[1] // width).clip(0, img.shape[1] - 1)
    return img[rows][:, cols]


def compose_frame(
    camera_img: np.ndarray,
    bev_img: np.ndarray | None,
    text_lines: Sequence[str] = (),
    scale: int = 2,
) -> np.ndarray:
    """Camera (upscaled by `scale`) and BEV (resized to the camera's displayed height) side by side,
    with `text_lines` as a caption underneath. Returns an RGB uint8 image of even width and height."""
    cam = np.asarray(camera_img, np.uint8)
    if scale > 1:
        cam = np.repeat(np.repeat(cam, scale, axis=0), scale, axis=1)
    parts = [cam]
    if bev_img is not None:
        bev = np.asarray(bev_img, np.uint8)
        h = cam.shape[0]
        w = max(round(bev.shape[1] * h / bev.shape[0]), 1)
        parts += [np.full((h, 4, 3), 16, np.uint8), _resize_nearest(bev, h, w)]
    top = np.concatenate(parts, axis=1)
    frame = top
    if text_lines:
        frame = np.concatenate([top, _text_block(list(text_lines), top.shape[1])], axis=0)
    ph, pw = frame.shape[0] % 2, frame.shape[1] % 2
    if ph or pw:
        frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)), constant_values=16)
    return np.ascontiguousarray(frame)


def _pad_to(frame: np.ndarray, block: int) -> np.ndarray:
    ph = (-frame.shape[0]) % block
    pw = (-frame.shape[1]) % block
    if ph or pw:
        frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)), constant_values=0)
    return frame


def write_video(frames: Iterable[np.ndarray], path: str | Path, fps: int = 20) -> Path:
    """Write RGB frames to an .mp4 (imageio-ffmpeg); falls back to a .gif next to it. Returns the path."""
    frames = [np.asarray(f, np.uint8) for f in frames]
    if not frames:
        raise ValueError("write_video needs at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() != ".gif":
        mp4 = path if path.suffix else path.with_suffix(".mp4")
        try:
            import imageio.v2 as imageio

            writer = imageio.get_writer(str(mp4), fps=fps, macro_block_size=16)
            try:
                for f in frames:
                    writer.append_data(_pad_to(f, 16))
            finally:
                writer.close()
            return mp4
        except Exception:
            if mp4.exists():
                mp4.unlink()
    from PIL import Image

    gif = path.with_suffix(".gif")
    images = [Image.fromarray(f) for f in frames]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=max(int(1000 / fps), 20), loop=0)
    return gif


# ================================================================================ numba kernels
@numba.njit(cache=True, fastmath=True)
def _cell_noise(ix, iy):  # pragma: no cover
    h = (ix * 374761393 + iy * 668265263) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    return ((h >> 8) & 0xFF) / 255.0 - 0.5


@numba.njit(cache=True, fastmath=True)
def _camera_ground(
    img,
    base,
    row0,
    gf,
    gl,
    gw,
    foot,
    cf,
    cl,
    cw,
    grid,
    x0,
    y0,
    inv_res,
    pal,
    nfine,
    ncoarse,
    haze,
    cam_x,
    cam_y,
    c,
    s,
):  # pragma: no cover
    h, w = img.shape[0], img.shape[1]
    ny, nx = grid.shape
    ns = gf.shape[2]
    inv_ns = 1.0 / ns
    for v in range(min(row0, h)):
        for u in range(w):
            img[v, u, 0] = base[v, u, 0]
            img[v, u, 1] = base[v, u, 1]
            img[v, u, 2] = base[v, u, 2]
    ox = (cam_x - x0) * inv_res
    oy = (cam_y - y0) * inv_res
    res = 1.0 / inv_res
    for v in range(row0, h):
        for u in range(w):
            r = 0.0
            g = 0.0
            b = 0.0
            if foot[v, u] < res:  # magnified: bilinear at the pixel centre
                fw = cw[v, u]
                f = cf[v, u]
                lft = cl[v, u]
                fx = ox + (f * c - lft * s) * inv_res - 0.5
                fy = oy + (f * s + lft * c) * inv_res - 0.5
                ix0 = math.floor(fx)
                iy0 = math.floor(fy)
                ax = fx - ix0
                ay = fy - iy0
                for dy in range(2):
                    for dx in range(2):
                        wgt = (ax if dx else 1.0 - ax) * (ay if dy else 1.0 - ay)
                        ix = ix0 + dx
                        iy = iy0 + dy
                        cls = 0
                        if 0 <= ix < nx and 0 <= iy < ny:
                            cls = grid[iy, ix]
                        nz = nfine[cls] * _cell_noise(ix, iy) + ncoarse[cls] * _cell_noise(
                            ix >> 3, (iy >> 3) + 7919
                        )
                        r += (pal[cls, 0] + nz) * wgt
                        g += (pal[cls, 1] + nz) * wgt
                        b += (pal[cls, 2] + nz * 0.8) * wgt
                keep = 1.0 - fw
                r = r * keep + haze[0] * fw
                g = g * keep + haze[1] * fw
                b = b * keep + haze[2] * fw
                img[v, u, 0] = min(max(r, 0.0), 255.0)
                img[v, u, 1] = min(max(g, 0.0), 255.0)
                img[v, u, 2] = min(max(b, 0.0), 255.0)
                continue
            for k in range(ns):
                fw = gw[v, u, k]
                if fw >= 0.999:
                    r += haze[0]
                    g += haze[1]
                    b += haze[2]
                    continue
                f = gf[v, u, k]
                lft = gl[v, u, k]
                fx = ox + (f * c - lft * s) * inv_res
                fy = oy + (f * s + lft * c) * inv_res
                cls = 0
                ix = 0
                iy = 0
                if fx >= 0.0 and fy >= 0.0:
                    ix = int(fx)
                    iy = int(fy)
                    if ix < nx and iy < ny:
                        cls = grid[iy, ix]
                nz = nfine[cls] * _cell_noise(ix, iy) + ncoarse[cls] * _cell_noise(ix >> 3, (iy >> 3) + 7919)
                keep = 1.0 - fw
                r += (pal[cls, 0] + nz) * keep + haze[0] * fw
                g += (pal[cls, 1] + nz) * keep + haze[1] * fw
                b += (pal[cls, 2] + nz * 0.8) * keep + haze[2] * fw
            r *= inv_ns
            g *= inv_ns
            b *= inv_ns
            img[v, u, 0] = min(max(r, 0.0), 255.0)
            img[v, u, 1] = min(max(g, 0.0), 255.0)
            img[v, u, 2] = min(max(b, 0.0), 255.0)


@numba.njit(cache=True)
def _push(prims, n, x, y, z0, yaw, hl, hw, h, r, g, b, emissive, key):  # pragma: no cover
    prims[n, 0] = x
    prims[n, 1] = y
    prims[n, 2] = z0
    prims[n, 3] = yaw
    prims[n, 4] = hl
    prims[n, 5] = hw
    prims[n, 6] = h
    prims[n, 7] = r
    prims[n, 8] = g
    prims[n, 9] = b
    prims[n, 10] = emissive
    prims[n, 11] = key
    return n + 1


@numba.njit(cache=True)
def _build_primitives(
    box,
    kind,
    height,
    color,
    lpos,
    lstate,
    lyaw,
    spos,
    syaw,
    cam_x,
    cam_y,
    cam_z,
    c,
    s,
    radius,
    kind_colors,
    kind_heights,
    light_colors,
):  # pragma: no cover
    """Boxes to draw, each (x, y, z0, yaw, hl, hw, h, r, g, b, emissive, key); key = painter's depth."""
    n_a = box.shape[0]
    n_l = lpos.shape[0]
    n_s = spos.shape[0]
    prims = np.empty((n_a * 3 + n_l * 3 + n_s * 2, 12), np.float64)
    n = 0
    for i in range(n_a):
        x, y, yaw, hl, hw = box[i, 0], box[i, 1], box[i, 2], box[i, 3], box[i, 4]
        dx, dy = x - cam_x, y - cam_y
        dist = math.sqrt(dx * dx + dy * dy)
        ext = math.sqrt(hl * hl + hw * hw)
        if dist - ext > radius or dx * c + dy * s < -ext - 0.5:
            continue
        k = kind[i]
        if k < 0 or k >= kind_colors.shape[0]:
            k = 0
        h = height[i]
        if h <= 0.0:
            h = kind_heights[k]
        if color[i, 0] > 0 or color[i, 1] > 0 or color[i, 2] > 0:
            r, g, b = color[i, 0], color[i, 1], color[i, 2]
        else:
            r, g, b = kind_colors[k, 0], kind_colors[k, 1], kind_colors[k, 2]
        cy, sy = math.cos(yaw), math.sin(yaw)
        if k == 1:  # pedestrian: legs, torso, head (camera above them: bottom-up order is correct)
            n = _push(prims, n, x, y, 0.0, yaw, hl * 0.8, hw * 0.85, h * 0.47, 45.0, 45.0, 70.0, 0.0, dist)
            n = _push(prims, n, x, y, h * 0.47, yaw, hl, hw, h * 0.38, r, g, b, 0.0, dist - 1e-3)
            n = _push(
                prims,
                n,
                x,
                y,
                h * 0.85,
                yaw,
                hl * 0.55,
                hw * 0.55,
                h * 0.15,
                225.0,
                185.0,
                150.0,
                0.0,
                dist - 2e-3,
            )
        elif k == 2:  # bicycle: frame and rider
            n = _push(prims, n, x, y, 0.0, yaw, hl, hw * 0.5, h * 0.45, 40.0, 40.0, 45.0, 0.0, dist)
            n = _push(
                prims,
                n,
                x - cy * hl * 0.2,
                y - sy * hl * 0.2,
                h * 0.45,
                yaw,
                hl * 0.35,
                hw,
                h * 0.55,
                r,
                g,
                b,
                0.0,
                dist - 1e-3,
            )
        elif k == 0 and h < cam_z - 0.05:  # car lower than the camera: body + glass cabin
            hb = h * 0.55
            n = _push(prims, n, x, y, 0.0, yaw, hl, hw, hb, r, g, b, 0.0, dist)
            n = _push(
                prims,
                n,
                x - cy * hl * 0.1,
                y - sy * hl * 0.1,
                hb,
                yaw,
                hl * 0.55,
                hw * 0.9,
                h - hb,
                r * 0.3 + 25.0,
                g * 0.3 + 35.0,
                b * 0.3 + 45.0,
                0.0,
                dist - 1e-3,
            )
        else:
            n = _push(prims, n, x, y, 0.0, yaw, hl, hw, h, r, g, b, 0.0, dist)
            if k == 4:  # emergency: light bar near the front of the roof, half blue half red
                fx, fy = x + cy * hl * 0.55, y + sy * hl * 0.55
                # seen from above the roof the bar is always in front of the body; from below, order by
                # its own distance so that the body hides it when it is on the far end of the roof
                bar_key = dist - 1e-3 if h < cam_z else math.sqrt((fx - cam_x) ** 2 + (fy - cam_y) ** 2)
                n = _push(
                    prims,
                    n,
                    fx - sy * hw * 0.35,
                    fy + cy * hw * 0.35,
                    h,
                    yaw,
                    0.18,
                    hw * 0.35,
                    0.18,
                    30.0,
                    80.0,
                    255.0,
                    1.0,
                    bar_key,
                )
                n = _push(
                    prims,
                    n,
                    fx + sy * hw * 0.35,
                    fy - cy * hw * 0.35,
                    h,
                    yaw,
                    0.18,
                    hw * 0.35,
                    0.18,
                    255.0,
                    40.0,
                    40.0,
                    1.0,
                    bar_key - 1e-3,
                )
    for i in range(n_l):
        x, y = lpos[i, 0], lpos[i, 1]
        dx, dy = x - cam_x, y - cam_y
        dist = math.sqrt(dx * dx + dy * dy)
        if dist > radius or dx * c + dy * s < -1.0:
            continue
        dup = False
        for j in range(i):  # one head per position and facing
            if abs(lpos[j, 0] - x) < 0.3 and abs(lpos[j, 1] - y) < 0.3 and math.cos(lyaw[j] - lyaw[i]) > 0.95:
                dup = True
                break
        if dup:
            continue
        yaw = lyaw[i]
        cy, sy = math.cos(yaw), math.sin(yaw)
        pole_h, head_h, head_hd, head_hw = 3.0, 1.2, 0.2, 0.3
        n = _push(prims, n, x, y, 0.0, yaw, 0.08, 0.08, pole_h, 70.0, 70.0, 70.0, 0.0, dist)
        n = _push(prims, n, x, y, pole_h, yaw, head_hd, head_hw, head_h, 30.0, 30.0, 32.0, 0.0, dist - 1e-3)
        st = lstate[i]
        if 0 <= st <= 2:
            slot = 2 - st  # 0 = bottom (green), 1 = middle (yellow), 2 = top (red)
            lx, ly = x + cy * (head_hd + 0.03), y + sy * (head_hd + 0.03)
            n = _push(
                prims,
                n,
                lx,
                ly,
                pole_h + 0.05 + slot * head_h / 3.0,
                yaw,
                0.03,
                head_hw * 0.8,
                head_h / 3.0 - 0.1,
                light_colors[st, 0],
                light_colors[st, 1],
                light_colors[st, 2],
                1.0,
                math.sqrt((lx - cam_x) ** 2 + (ly - cam_y) ** 2),
            )
    for i in range(n_s):
        x, y = spos[i, 0], spos[i, 1]
        dx, dy = x - cam_x, y - cam_y
        dist = math.sqrt(dx * dx + dy * dy)
        if dist > radius or dx * c + dy * s < -1.0:
            continue
        n = _push(prims, n, x, y, 0.0, syaw[i], 0.05, 0.05, 2.0, 120.0, 120.0, 120.0, 0.0, dist)
        n = _push(prims, n, x, y, 2.0, syaw[i], 0.03, 0.38, 0.76, 200.0, 20.0, 25.0, 0.0, dist - 1e-3)
    return prims[:n]


@numba.njit(cache=True, fastmath=True)
def _fill_convex(img, us, vs, m, r, g, b):  # pragma: no cover
    h, w = img.shape[0], img.shape[1]
    vmin, vmax = vs[0], vs[0]
    for e in range(1, m):
        vmin = min(vmin, vs[e])
        vmax = max(vmax, vs[e])
    i0 = max(math.ceil(vmin - 0.5), 0)
    i1 = min(math.ceil(vmax - 0.5) - 1, h - 1)
    for i in range(i0, i1 + 1):
        yc = i + 0.5
        xl = 1e30
        xr = -1e30
        for e in range(m):
            f = e + 1 if e + 1 < m else 0
            ya, yb = vs[e], vs[f]
            if (ya <= yc) != (yb <= yc):
                x = us[e] + (yc - ya) * (us[f] - us[e]) / (yb - ya)
                xl = min(xl, x)
                xr = max(xr, x)
        if xl > xr:
            continue
        j0 = math.ceil(max(xl, -1.0) - 0.5)
        j1 = math.ceil(min(xr, w + 1.0) - 0.5) - 1
        j0 = max(j0, 0)
        j1 = min(j1, w - 1)
        for j in range(j0, j1 + 1):
            img[i, j, 0] = r
            img[i, j, 1] = g
            img[i, j, 2] = b


# face corner indices (corners: 0 (+l,+w) 1 (+l,-w) 2 (-l,-w) 3 (-l,+w); +4 on top) and local normals
_FACES = np.array([[0, 1, 5, 4], [2, 3, 7, 6], [3, 0, 4, 7], [1, 2, 6, 5], [4, 5, 6, 7]], np.int64)
_FACE_NORMALS = np.array(
    [[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]
)
_SUN = np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])


@numba.njit(cache=True, fastmath=True)
def _draw_boxes(
    img, prims, cam_x, cam_y, cam_z, c, s, cp, sp, focal, cx, cy, near, fog_start, fog_end, haze
):  # pragma: no cover
    n = prims.shape[0]
    order = np.argsort(-prims[:, 11])  # far to near
    faces = _FACES
    normals = _FACE_NORMALS
    sun = _SUN
    wx = np.empty(8)
    wy = np.empty(8)
    wz = np.empty(8)
    xc = np.empty(8)
    yc = np.empty(8)
    zc = np.empty(8)
    px = np.empty(8)
    py = np.empty(8)
    pz = np.empty(8)
    qx = np.empty(8)
    qy = np.empty(8)
    qz = np.empty(8)
    us = np.empty(8)
    vs = np.empty(8)
    sgn_l = (1.0, 1.0, -1.0, -1.0)
    sgn_w = (1.0, -1.0, -1.0, 1.0)
    fog_span = max(fog_end - fog_start, 1e-6)
    for oi in range(n):
        p = order[oi]
        x, y, z0 = prims[p, 0], prims[p, 1], prims[p, 2]
        yaw, hl, hw, hh = prims[p, 3], prims[p, 4], prims[p, 5], prims[p, 6]
        by, bs = math.cos(yaw), math.sin(yaw)
        for k in range(4):
            lx, ly = sgn_l[k] * hl, sgn_w[k] * hw
            cx_ = x + lx * by - ly * bs
            cy_ = y + lx * bs + ly * by
            wx[k] = cx_
            wy[k] = cy_
            wz[k] = z0
            wx[k + 4] = cx_
            wy[k + 4] = cy_
            wz[k + 4] = z0 + hh
        any_front = False
        for k in range(8):
            dx, dy, dz = wx[k] - cam_x, wy[k] - cam_y, wz[k] - cam_z
            f = dx * c + dy * s
            xc[k] = f * cp + dz * sp
            yc[k] = -dx * s + dy * c
            zc[k] = -f * sp + dz * cp
            if xc[k] > near:
                any_front = True
        if not any_front:
            continue
        dist = math.sqrt((x - cam_x) ** 2 + (y - cam_y) ** 2)
        fw = min(max((dist - fog_start) / fog_span, 0.0), 1.0)
        fw = fw * fw * (3.0 - 2.0 * fw)
        if fw >= 0.999:
            continue
        emissive = prims[p, 10] > 0.5
        for fi in range(5):
            nlx, nly, nz = normals[fi, 0], normals[fi, 1], normals[fi, 2]
            nwx = nlx * by - nly * bs
            nwy = nlx * bs + nly * by
            v0 = faces[fi, 0]
            if nwx * (cam_x - wx[v0]) + nwy * (cam_y - wy[v0]) + nz * (cam_z - wz[v0]) <= 0.0:
                continue
            if emissive:
                shade = 1.0
            else:
                lam = nwx * sun[0] + nwy * sun[1] + nz * sun[2]
                shade = 0.55 + 0.45 * max(lam, 0.0)
            r = prims[p, 7] * shade * (1.0 - fw) + haze[0] * fw
            g = prims[p, 8] * shade * (1.0 - fw) + haze[1] * fw
            b = prims[p, 9] * shade * (1.0 - fw) + haze[2] * fw
            for e in range(4):
                vi = faces[fi, e]
                px[e] = xc[vi]
                py[e] = yc[vi]
                pz[e] = zc[vi]
            # clip against the near plane (Sutherland-Hodgman, one plane)
            m = 0
            for e in range(4):
                f = e + 1 if e < 3 else 0
                a_in = px[e] >= near
                b_in = px[f] >= near
                if a_in:
                    qx[m] = px[e]
                    qy[m] = py[e]
                    qz[m] = pz[e]
                    m += 1
                if a_in != b_in:
                    t = (near - px[e]) / (px[f] - px[e])
                    qx[m] = near
                    qy[m] = py[e] + t * (py[f] - py[e])
                    qz[m] = pz[e] + t * (pz[f] - pz[e])
                    m += 1
            if m < 3:
                continue
            for e in range(m):
                us[e] = cx - focal * qy[e] / qx[e]
                vs[e] = cy - focal * qz[e] / qx[e]
            _fill_convex(
                img, us, vs, m, min(max(r, 0.0), 255.0), min(max(g, 0.0), 255.0), min(max(b, 0.0), 255.0)
            )


@numba.njit(cache=True, fastmath=True)
def _bev_fill_box(img, cx, cy, cyaw, hl, hw, r, g, b):  # pragma: no cover
    """Fill an oriented rectangle given in pixel space: centre (col, row), yaw measured from 'up' CCW."""
    h, w = img.shape[0], img.shape[1]
    ux, uy = -math.sin(cyaw), -math.cos(cyaw)  # box forward in (col, row)
    vx, vy = -math.cos(cyaw), math.sin(cyaw)  # box left in (col, row)
    ext = math.sqrt(hl * hl + hw * hw) + 1.0
    j0 = max(math.floor(cx - ext), 0)
    j1 = min(math.ceil(cx + ext), w - 1)
    i0 = max(math.floor(cy - ext), 0)
    i1 = min(math.ceil(cy + ext), h - 1)
    for i in range(i0, i1 + 1):
        dy = i + 0.5 - cy
        for j in range(j0, j1 + 1):
            dx = j + 0.5 - cx
            a = dx * ux + dy * uy
            if a > hl or a < -hl:
                continue
            bb = dx * vx + dy * vy
            if bb > hw or bb < -hw:
                continue
            img[i, j, 0] = r
            img[i, j, 1] = g
            img[i, j, 2] = b


@numba.njit(cache=True, fastmath=True)
def _bev_segment(img, c0, r0, c1, r1, hw, r, g, b, alpha):  # pragma: no cover
    """Capsule of half width `hw` px between (col, row) points, alpha-blended."""
    h, w = img.shape[0], img.shape[1]
    dx, dy = c1 - c0, r1 - r0
    ll = dx * dx + dy * dy
    j0 = max(math.floor(min(c0, c1) - hw), 0)
    j1 = min(math.ceil(max(c0, c1) + hw), w - 1)
    i0 = max(math.floor(min(r0, r1) - hw), 0)
    i1 = min(math.ceil(max(r0, r1) + hw), h - 1)
    hw2 = hw * hw
    for i in range(i0, i1 + 1):
        py = i + 0.5 - r0
        for j in range(j0, j1 + 1):
            px = j + 0.5 - c0
            t = 0.0
            if ll > 0.0:
                t = min(max((px * dx + py * dy) / ll, 0.0), 1.0)
            ex, ey = px - t * dx, py - t * dy
            if ex * ex + ey * ey <= hw2:
                img[i, j, 0] = img[i, j, 0] * (1.0 - alpha) + r * alpha
                img[i, j, 1] = img[i, j, 1] * (1.0 - alpha) + g * alpha
                img[i, j, 2] = img[i, j, 2] * (1.0 - alpha) + b * alpha


@numba.njit(cache=True, fastmath=True)
def _render_bev(
    img,
    grid,
    x0,
    y0,
    inv_res,
    pal,
    ex,
    ey,
    c,
    s,
    mpp,
    erow,
    ecol,
    box,
    kind,
    kind_colors,
    ego_hl,
    ego_hw,
    ego_color,
    route,
    route_color,
    stop,
    lstate,
    lfrom,
    lane_end,
    lane_end_yaw,
    lane_width,
    light_colors,
):  # pragma: no cover
    h, w = img.shape[0], img.shape[1]
    ny, nx = grid.shape
    # map
    ox = (ex - x0) * inv_res
    oy = (ey - y0) * inv_res
    k = mpp * inv_res
    for i in range(h):
        f = (erow - (i + 0.5)) * k
        for j in range(w):
            lft = (ecol - (j + 0.5)) * k
            fx = ox + f * c - lft * s
            fy = oy + f * s + lft * c
            cls = 0
            if fx >= 0.0 and fy >= 0.0:
                ix = int(fx)
                iy = int(fy)
                if ix < nx and iy < ny:
                    cls = grid[iy, ix]
            img[i, j, 0] = pal[cls, 0]
            img[i, j, 1] = pal[cls, 1]
            img[i, j, 2] = pal[cls, 2]
    inv_mpp = 1.0 / mpp
    view = (h + w) * mpp + 10.0
    # traffic-light stop lines, coloured by state
    nl = lane_end.shape[0]
    for q in range(lstate.shape[0]):
        st = lstate[q]
        if st < 0 or st > 2:
            continue
        ax, ay, bx, by = stop[q, 0, 0], stop[q, 0, 1], stop[q, 1, 0], stop[q, 1, 1]
        if (bx - ax) ** 2 + (by - ay) ** 2 < 0.01:
            lane = lfrom[q]
            if lane < 0 or lane >= nl:
                continue
            px, py, yaw, half = lane_end[lane, 0], lane_end[lane, 1], lane_end_yaw[lane], lane_width[lane] / 2
            ax, ay = px - math.sin(yaw) * half, py + math.cos(yaw) * half
            bx, by = px + math.sin(yaw) * half, py - math.cos(yaw) * half
        if abs(ax - ex) > view or abs(ay - ey) > view:
            continue
        fa, la = (ax - ex) * c + (ay - ey) * s, -(ax - ex) * s + (ay - ey) * c
        fb, lb = (bx - ex) * c + (by - ey) * s, -(bx - ex) * s + (by - ey) * c
        _bev_segment(
            img,
            ecol - la * inv_mpp,
            erow - fa * inv_mpp,
            ecol - lb * inv_mpp,
            erow - fb * inv_mpp,
            max(0.45 * inv_mpp, 1.0),
            light_colors[st, 0],
            light_colors[st, 1],
            light_colors[st, 2],
            1.0,
        )
    # route ahead
    for q in range(route.shape[0] - 1):
        ax, ay, bx, by = route[q, 0], route[q, 1], route[q + 1, 0], route[q + 1, 1]
        if abs(ax - ex) > view or abs(ay - ey) > view:
            continue
        fa, la = (ax - ex) * c + (ay - ey) * s, -(ax - ex) * s + (ay - ey) * c
        fb, lb = (bx - ex) * c + (by - ey) * s, -(bx - ex) * s + (by - ey) * c
        _bev_segment(
            img,
            ecol - la * inv_mpp,
            erow - fa * inv_mpp,
            ecol - lb * inv_mpp,
            erow - fb * inv_mpp,
            max(0.5 * inv_mpp, 1.0),
            route_color[0],
            route_color[1],
            route_color[2],
            0.6,
        )
    # agents
    for q in range(box.shape[0]):
        ax, ay = box[q, 0], box[q, 1]
        if abs(ax - ex) > view or abs(ay - ey) > view:
            continue
        kk = kind[q]
        if kk < 0 or kk >= kind_colors.shape[0]:
            kk = 0
        fa, la = (ax - ex) * c + (ay - ey) * s, -(ax - ex) * s + (ay - ey) * c
        rel = box[q, 2] - math.atan2(s, c)
        _bev_fill_box(
            img,
            ecol - la * inv_mpp,
            erow - fa * inv_mpp,
            rel,
            max(box[q, 3] * inv_mpp, 0.75),
            max(box[q, 4] * inv_mpp, 0.75),
            kind_colors[kk, 0],
            kind_colors[kk, 1],
            kind_colors[kk, 2],
        )
    _bev_fill_box(
        img, ecol, erow, 0.0, ego_hl * inv_mpp, ego_hw * inv_mpp, ego_color[0], ego_color[1], ego_color[2]
    )


__all__ = [
    "KIND_COLORS",
    "AgentKind",
    "BevRenderer",
    "FrontCamera",
    "LightState",
    "MapRaster",
    "compose_frame",
    "write_video",
]
