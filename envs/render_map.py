"""Static map raster: the road network painted once into a uint8 class-id grid.

`MapRaster.build(lanes)` rasterises (Numba) a `LaneGraph` at `resolution` metres per cell:

- drivable road surface: every non-sidewalk, non-crossing lane as a band of the lane's width along
  its centre polyline (round joins at interior vertices, flat ends), plus the junction polygons;
- sidewalks (sidewalk lanes, and SUMO walking areas read from the .net.xml when it is available);
- pedestrian crossings as zebra stripes (painted over road only);
- lane markings on normal (non-junction) lanes: dashed white between same-direction neighbours,
  solid yellow on the left edge of a lane whose left neighbour drives the other way (the two
  directions each paint one, which gives a double yellow centre line), solid white at other edges;
- stop lines across the end of stop-controlled lanes (`lanes.stop_lanes`) and of traffic-light
  controlled lanes (`lanes.tl_from_lane`).

Cell (iy, ix) covers world x in [x0 + ix * res, x0 + (ix + 1) * res) and y likewise from y0: rows run
south to north (use `to_rgb(north_up=True)` for a picture). Cells outside the grid read as TERRAIN.
The raster also keeps each lane's end point, end heading and width, which the renderers use to face
traffic lights and to draw stop lines.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numba
import numpy as np

if TYPE_CHECKING:
    from envs.maps.network import LaneGraph


class MapClass(IntEnum):
    TERRAIN = 0
    ROAD = 1
    SIDEWALK = 2
    CROSSING = 3  # zebra stripe
    LANE_WHITE = 4
    LANE_YELLOW = 5
    STOP_LINE = 6


N_CLASSES = len(MapClass)

# Natural-looking colours for the front camera.
CAMERA_PALETTE = np.array(
    [
        (96, 112, 74),  # terrain: dry grass
        (78, 78, 82),  # road: asphalt
        (150, 146, 140),  # sidewalk: concrete
        (215, 215, 210),  # zebra stripe
        (220, 220, 215),  # white marking
        (215, 175, 40),  # yellow marking
        (230, 230, 225),  # stop line
    ],
    dtype=np.uint8,
)

# Schematic colours for the bird's-eye view.
BEV_PALETTE = np.array(
    [
        (24, 24, 24),
        (80, 80, 80),
        (128, 128, 128),
        (175, 175, 175),
        (225, 225, 225),
        (235, 200, 60),
        (255, 255, 255),
    ],
    dtype=np.uint8,
)

MARK_HALF_WIDTH = 0.15  # m, half width of painted lines (at least ~half a cell is used)
DASH_ON, DASH_OFF = 3.0, 6.0  # m, dashed lane line pattern
ZEBRA_ON, ZEBRA_OFF = 0.5, 0.5  # m, crossing stripes along the crossing
STOP_LINE_DEPTH = 0.5  # m


@dataclass
class MapRaster:
    grid: np.ndarray  # (ny, nx) uint8 MapClass ids, row = y index (south to north)
    origin: np.ndarray  # (2,) world (x0, y0) of cell (0, 0)'s lower-left corner
    resolution: float  # metres per cell
    palette: np.ndarray  # (N_CLASSES, 3) uint8, camera colours
    lane_end: np.ndarray  # (L, 2) last centre point of every lane
    lane_end_yaw: np.ndarray  # (L,) heading of the last centre segment
    lane_width: np.ndarray  # (L,)
    net_path: str = ""

    # ------------------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        lanes: LaneGraph,
        resolution: float = 0.2,
        margin: float = 10.0,
        walkingareas: bool = True,
    ) -> MapRaster:
        """Rasterise `lanes`. `walkingareas` also reads SUMO walking-area polygons from lanes.net_path."""
        pts = [lanes.points]
        pts += [p for p in lanes.junction_polygons if len(p)]
        walk_polys = _read_walkingareas(lanes.net_path) if walkingareas else []
        pts += walk_polys
        allp = np.concatenate(pts)
        lo = np.floor(allp.min(axis=0) - margin)
        hi = np.ceil(allp.max(axis=0) + margin)
        nx = math.ceil((hi[0] - lo[0]) / resolution)
        ny = math.ceil((hi[1] - lo[1]) / resolution)
        grid = np.zeros((ny, nx), np.uint8)
        x0, y0, inv = float(lo[0]), float(lo[1]), 1.0 / resolution

        def mask(*classes: MapClass) -> np.ndarray:
            m = np.zeros(256, np.bool_)
            m[list(classes)] = True
            return m

        everything = np.ones(256, np.bool_)
        n = len(lanes)
        width = np.asarray(lanes.width, np.float64)
        length = _lane_lengths(lanes.points, lanes.offsets)
        points = np.ascontiguousarray(lanes.points, np.float64)
        offsets = np.ascontiguousarray(lanes.offsets, np.int64)

        def stroke(
            sel: np.ndarray, off, hw, on, off_len, s_lo, s_hi, value: MapClass, over: np.ndarray
        ) -> None:
            sel = np.asarray(sel, np.int64)
            if not len(sel):
                return
            k = len(sel)

            def full(v) -> np.ndarray:
                return np.broadcast_to(np.asarray(v, np.float64), (k,)).copy()

            _stroke_lanes(
                grid,
                x0,
                y0,
                inv,
                points,
                offsets,
                sel,
                full(off),
                full(hw),
                full(on),
                full(off_len),
                full(s_lo),
                full(s_hi),
                np.uint8(value),
                over,
            )

        # 1. road surface: junction areas, then every lane that is neither sidewalk nor crossing.
        for poly in lanes.junction_polygons:
            if len(poly) >= 3:
                _fill_polygon(
                    grid,
                    x0,
                    y0,
                    inv,
                    np.ascontiguousarray(poly, np.float64),
                    np.uint8(MapClass.ROAD),
                    everything,
                )
        road = np.where(~lanes.is_sidewalk & ~lanes.is_crossing)[0]
        stroke(road, 0.0, width[road] / 2, 0.0, 0.0, 0.0, length[road], MapClass.ROAD, everything)

        # 2. sidewalks: walking areas may cover junction corners; sidewalk lanes only fill terrain.
        for poly in walk_polys:
            if len(poly) >= 3:
                _fill_polygon(
                    grid,
                    x0,
                    y0,
                    inv,
                    np.ascontiguousarray(poly, np.float64),
                    np.uint8(MapClass.SIDEWALK),
                    mask(MapClass.TERRAIN, MapClass.ROAD),
                )
        side = np.where(lanes.is_sidewalk)[0]
        stroke(
            side, 0.0, width[side] / 2, 0.0, 0.0, 0.0, length[side], MapClass.SIDEWALK, mask(MapClass.TERRAIN)
        )

        # 3. zebra crossings, over road only.
        cross = np.where(lanes.is_crossing)[0]
        stroke(
            cross,
            0.0,
            np.maximum(width[cross] / 2 - 0.25, 0.3),
            ZEBRA_ON,
            ZEBRA_OFF,
            0.0,
            length[cross],
            MapClass.CROSSING,
            mask(MapClass.ROAD),
        )

        # 4. lane markings on normal driving lanes.
        hw_line = max(MARK_HALF_WIDTH, 0.55 * resolution)
        normal = lanes.drivable & ~lanes.is_internal
        on_road = mask(MapClass.ROAD)
        dashed = np.where(normal & (lanes.left >= 0))[0]
        stroke(
            dashed,
            width[dashed] / 2,
            hw_line,
            DASH_ON,
            DASH_OFF,
            0.0,
            length[dashed],
            MapClass.LANE_WHITE,
            on_road,
        )
        leftmost = np.where(normal & (lanes.left < 0))[0]
        opposite = np.array([_has_opposite_left(lanes, int(i), length[i]) for i in leftmost], np.bool_)
        yellow = leftmost[opposite] if len(leftmost) else leftmost
        white_left = leftmost[~opposite] if len(leftmost) else leftmost
        # The two directions' yellow lines overlap into one solid band about 2.7 line half-widths wide; edge
        # lines keep a clear gap (> 1 cell) to the road edge so that neither aliases into dotted lines.
        yellow_inset = 0.35 * hw_line
        inset = hw_line + max(0.3, 1.5 * resolution)
        stroke(
            yellow,
            width[yellow] / 2 - yellow_inset,
            hw_line,
            0.0,
            0.0,
            0.0,
            length[yellow],
            MapClass.LANE_YELLOW,
            on_road,
        )
        stroke(
            white_left,
            width[white_left] / 2 - inset,
            hw_line,
            0.0,
            0.0,
            0.0,
            length[white_left],
            MapClass.LANE_WHITE,
            on_road,
        )
        rightmost = np.where(normal & (lanes.right < 0))[0]
        stroke(
            rightmost,
            -(width[rightmost] / 2 - inset),
            hw_line,
            0.0,
            0.0,
            0.0,
            length[rightmost],
            MapClass.LANE_WHITE,
            on_road,
        )

        # 5. stop lines across the ends of stop-sign and traffic-light lanes.
        stop = np.unique(
            np.concatenate([np.asarray(lanes.stop_lanes, np.int64), np.asarray(lanes.tl_from_lane, np.int64)])
        )
        stop = stop[(stop >= 0) & (stop < n)]
        stroke(
            stop,
            0.0,
            width[stop] / 2 - 0.05,
            0.0,
            0.0,
            np.maximum(length[stop] - STOP_LINE_DEPTH - 0.1, 0.0),
            np.maximum(length[stop] - 0.1, 0.0),
            MapClass.STOP_LINE,
            mask(MapClass.ROAD, MapClass.LANE_WHITE, MapClass.LANE_YELLOW, MapClass.CROSSING),
        )

        end, end_yaw = lanes.lane_ends()
        return cls(
            grid=grid,
            origin=np.array([x0, y0]),
            resolution=float(resolution),
            palette=CAMERA_PALETTE.copy(),
            lane_end=end,
            lane_end_yaw=end_yaw,
            lane_width=width.copy(),
            net_path=str(lanes.net_path),
        )

    # ------------------------------------------------------------------------------- queries
    @property
    def shape(self) -> tuple[int, int]:
        return int(self.grid.shape[0]), int(self.grid.shape[1])

    def world_to_cell(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) world points -> (..., 2) integer (iy, ix) cells (may lie outside the grid)."""
        xy = np.asarray(xy, np.float64)
        ix = np.floor((xy[..., 0] - self.origin[0]) / self.resolution).astype(np.int64)
        iy = np.floor((xy[..., 1] - self.origin[1]) / self.resolution).astype(np.int64)
        return np.stack([iy, ix], axis=-1)

    def class_at(self, xy: np.ndarray) -> np.ndarray:
        """MapClass ids at world points (..., 2); TERRAIN outside the grid."""
        cells = self.world_to_cell(xy)
        iy, ix = cells[..., 0], cells[..., 1]
        inside = (iy >= 0) & (iy < self.grid.shape[0]) & (ix >= 0) & (ix < self.grid.shape[1])
        out = np.zeros(iy.shape, np.uint8)
        out[inside] = self.grid[iy[inside], ix[inside]]
        return out

    def to_rgb(self, palette: np.ndarray | None = None, north_up: bool = True) -> np.ndarray:
        """The whole raster as an RGB image (for inspection)."""
        pal = self.palette if palette is None else palette
        img = pal[self.grid]
        return img[::-1] if north_up else img

    # ----------------------------------------------------------------------------- save/load
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        np.savez_compressed(
            path,
            grid=self.grid,
            origin=self.origin,
            resolution=np.float64(self.resolution),
            palette=self.palette,
            lane_end=self.lane_end,
            lane_end_yaw=self.lane_end_yaw,
            lane_width=self.lane_width,
            net_path=np.array(self.net_path),
        )
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path: str | Path) -> MapRaster:
        with np.load(path) as d:
            return cls(
                grid=d["grid"],
                origin=d["origin"],
                resolution=float(d["resolution"]),
                palette=d["palette"],
                lane_end=d["lane_end"],
                lane_end_yaw=d["lane_end_yaw"],
                lane_width=d["lane_width"],
                net_path=str(d["net_path"]),
            )


# ------------------------------------------------------------------------------------ helpers
def _read_walkingareas(net_path: str) -> list[np.ndarray]:
    """Walking-area polygons of a SUMO network (LaneGraph skips them); [] if the file is unreadable."""
    path = Path(net_path) if net_path else None
    if path is None or not path.is_file():
        return []
    polys: list[np.ndarray] = []
    try:
        for _, elem in ET.iterparse(path, events=("end",)):
            if elem.tag != "edge":
                continue
            if elem.get("function") == "walkingarea":
                for lane in elem.iter("lane"):
                    shape = lane.get("shape", "")
                    pts = [tuple(float(v) for v in tok.split(",")[:2]) for tok in shape.split()]
                    if len(pts) >= 3:
                        polys.append(np.asarray(pts, np.float64))
            elem.clear()
    except (ET.ParseError, OSError, ValueError):
        return []
    return polys


def _lane_lengths(points: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    seg = np.zeros(len(points))
    if len(points) > 1:
        seg[1:] = np.hypot(*np.diff(points, axis=0).T)
    cum = np.cumsum(seg)
    start, end = offsets[:-1], np.maximum(offsets[1:] - 1, offsets[:-1])
    return cum[end] - cum[start]


def _has_opposite_left(lanes: LaneGraph, lane: int, length: float) -> bool:
    """Whether a normal lane of the opposite direction lies just left of `lane` (a two-way road's centre)."""
    w = float(lanes.width[lane])
    votes = 0
    tries = 0
    for frac in (0.25, 0.5, 0.75):
        x, y, yaw = lanes.position_on_lane(lane, frac * length)
        px = x - math.sin(yaw) * (w / 2 + 1.2)
        py = y + math.cos(yaw) * (w / 2 + 1.2)
        tries += 1
        for other, _dist, _s, oyaw in lanes.nearest_lanes(px, py, radius=1.5, drivable_only=True):
            if other == lane or lanes.is_internal[other]:
                continue
            if math.cos(oyaw - yaw) < -0.7:
                votes += 1
                break
    return votes * 2 >= tries


# ------------------------------------------------------------------------------ numba kernels
@numba.njit(cache=True)
def _fill_piece(grid, x0, y0, inv_res, ax, ay, bx, by, hw, round_caps, value, over):  # pragma: no cover
    """Cells whose centre lies within `hw` of segment a-b (flat ends unless round_caps) get `value`."""
    ny, nx = grid.shape
    res = 1.0 / inv_res
    dx, dy = bx - ax, by - ay
    seg_len = math.sqrt(dx * dx + dy * dy)
    if seg_len < 1e-9:
        if not round_caps:
            return
        ux, uy = 1.0, 0.0
        seg_len = 0.0
    else:
        ux, uy = dx / seg_len, dy / seg_len
    j0 = max(math.floor((min(ax, bx) - hw - x0) * inv_res), 0)
    j1 = min(math.floor((max(ax, bx) + hw - x0) * inv_res), nx - 1)
    i0 = max(math.floor((min(ay, by) - hw - y0) * inv_res), 0)
    i1 = min(math.floor((max(ay, by) + hw - y0) * inv_res), ny - 1)
    hw2 = hw * hw
    for i in range(i0, i1 + 1):
        py = y0 + (i + 0.5) * res - ay
        for j in range(j0, j1 + 1):
            px = x0 + (j + 0.5) * res - ax
            s = px * ux + py * uy
            t = -px * uy + py * ux
            if t > hw or t < -hw:
                continue
            if s < 0.0:
                if not round_caps or s * s + t * t > hw2:
                    continue
            elif s > seg_len and (not round_caps or (s - seg_len) * (s - seg_len) + t * t > hw2):
                continue
            if over[grid[i, j]]:
                grid[i, j] = value


@numba.njit(cache=True)
def _stroke_lanes(
    grid, x0, y0, inv_res, points, offsets, lanes, off, hw, dash_on, dash_off, s_lo, s_hi, value, over
):  # pragma: no cover
    """Paint lane polylines shifted `off` to the left, `hw` half thick, between arc lengths s_lo..s_hi.

    dash_off > 0 gives a dash pattern (dash_on painted, dash_off skipped, phase 0 at s_lo). Segments are
    painted with flat ends; interior vertices get a round joint bridging the two offset segments.
    """
    for q in range(lanes.shape[0]):
        lane = lanes[q]
        p0, p1 = offsets[lane], offsets[lane + 1]
        if p1 - p0 < 2:
            continue
        period = dash_on[q] + dash_off[q]
        dashed = dash_off[q] > 0.0 and dash_on[q] > 0.0
        s_acc = 0.0
        pnx, pny = 0.0, 0.0
        for k in range(p0, p1 - 1):
            ax, ay = points[k, 0], points[k, 1]
            bx, by = points[k + 1, 0], points[k + 1, 1]
            dx, dy = bx - ax, by - ay
            seg_len = math.sqrt(dx * dx + dy * dy)
            if seg_len < 1e-6:
                continue
            ux, uy = dx / seg_len, dy / seg_len
            nx_, ny_ = -uy, ux
            o = off[q]
            # joint at vertex a between the previous offset segment and this one
            if k > p0 and (pnx != 0.0 or pny != 0.0) and s_lo[q] <= s_acc <= s_hi[q]:
                on = True
                if dashed:
                    on = ((s_acc - s_lo[q]) % period) < dash_on[q]
                if on:
                    _fill_piece(
                        grid,
                        x0,
                        y0,
                        inv_res,
                        ax + pnx * o,
                        ay + pny * o,
                        ax + nx_ * o,
                        ay + ny_ * o,
                        hw[q],
                        True,
                        value,
                        over,
                    )
            a = max(s_acc, s_lo[q])
            b = min(s_acc + seg_len, s_hi[q])
            if b > a:
                if not dashed:
                    t0, t1 = a - s_acc, b - s_acc
                    _fill_piece(
                        grid,
                        x0,
                        y0,
                        inv_res,
                        ax + ux * t0 + nx_ * o,
                        ay + uy * t0 + ny_ * o,
                        ax + ux * t1 + nx_ * o,
                        ay + uy * t1 + ny_ * o,
                        hw[q],
                        False,
                        value,
                        over,
                    )
                else:
                    m = math.floor((a - s_lo[q]) / period)
                    while True:
                        ds = s_lo[q] + m * period
                        if ds >= b:
                            break
                        de = ds + dash_on[q]
                        c0, c1 = max(ds, a), min(de, b)
                        if c1 > c0:
                            t0, t1 = c0 - s_acc, c1 - s_acc
                            _fill_piece(
                                grid,
                                x0,
                                y0,
                                inv_res,
                                ax + ux * t0 + nx_ * o,
                                ay + uy * t0 + ny_ * o,
                                ax + ux * t1 + nx_ * o,
                                ay + uy * t1 + ny_ * o,
                                hw[q],
                                False,
                                value,
                                over,
                            )
                        m += 1
            s_acc += seg_len
            pnx, pny = nx_, ny_


@numba.njit(cache=True)
def _fill_polygon(grid, x0, y0, inv_res, poly, value, over):  # pragma: no cover
    """Even-odd scanline fill of a (possibly non-convex) polygon given in world coordinates."""
    ny, nx = grid.shape
    n = poly.shape[0]
    px = (poly[:, 0] - x0) * inv_res
    py = (poly[:, 1] - y0) * inv_res
    i0 = max(math.floor(py.min()), 0)
    i1 = min(math.ceil(py.max()), ny - 1)
    xs = np.empty(n, np.float64)
    for i in range(i0, i1 + 1):
        yc = i + 0.5
        m = 0
        for e in range(n):
            f = (e + 1) % n
            ya, yb = py[e], py[f]
            if (ya <= yc) != (yb <= yc):
                xs[m] = px[e] + (yc - ya) * (px[f] - px[e]) / (yb - ya)
                m += 1
        if m < 2:
            continue
        cuts = np.sort(xs[:m])
        for p in range(0, m - 1, 2):
            j0 = max(math.ceil(cuts[p] - 0.5), 0)
            j1 = min(math.ceil(cuts[p + 1] - 0.5) - 1, nx - 1)
            for j in range(j0, j1 + 1):
                if over[grid[i, j]]:
                    grid[i, j] = value
