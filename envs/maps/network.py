"""The static road network as arrays (`LaneGraph`), read from a SUMO .net.xml.

The lane graph is what every consumer needs from a map: centre polylines, widths, speed limits,
successors and neighbours, junction areas, signalised links and stop-controlled lanes. It is read
with ElementTree (no sumolib network objects kept around), so it pickles cheaply to Ray actors and
the Numba kernels take its arrays directly.
"""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from envs.maps.build import MapError

GRID_CELL = 8.0  # metres, spatial-index cell for nearest-lane queries


def _parse_shape(text: str) -> np.ndarray:
    pts = []
    for token in text.split():
        parts = token.split(",")
        pts.append((float(parts[0]), float(parts[1])))
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


@dataclass
class LaneGraph:
    net_path: str
    lane_ids: list[str]
    edge_of_lane: list[str]
    points: np.ndarray  # (P, 2) all centre polylines packed
    offsets: np.ndarray  # (L + 1,) lane i is points[offsets[i]:offsets[i + 1]]
    width: np.ndarray  # (L,)
    length: np.ndarray  # (L,)
    speed_limit: np.ndarray  # (L,) m/s
    is_internal: np.ndarray  # (L,) bool, lane inside a junction
    is_sidewalk: np.ndarray  # (L,) bool, pedestrians only
    is_crossing: np.ndarray  # (L,) bool, pedestrian crossing over a road
    drivable: np.ndarray  # (L,) bool, passenger cars allowed
    lane_index: np.ndarray  # (L,) SUMO index within its edge, 0 = rightmost
    left: np.ndarray  # (L,) neighbour lane index on the left in the same edge, -1 if none
    right: np.ndarray  # (L,)
    succ_offsets: np.ndarray  # (L + 1,) CSR over succ
    succ: np.ndarray  # successors: via-internal lanes from normal lanes, next lanes from internal ones
    junction_ids: list[str]
    junction_polygons: list[np.ndarray]
    junction_type: list[str]
    net_offset: np.ndarray  # (2,) netOffset: CARLA (x, y) -> world (x + ox, -y + oy)
    bounds: np.ndarray  # (4,) xmin, ymin, xmax, ymax of the converted network
    # Signalised links: one row per (incoming lane, internal via lane) controlled by a traffic light.
    tl_ids: list[str] = field(default_factory=list)
    tl_link_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    tl_from_lane: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    tl_via_lane: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    # Stop-controlled incoming lanes (connection state 's' or all-way stop 'w').
    stop_lanes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    # Segment spatial index (built in __post_init__).
    seg_a: np.ndarray = field(init=False, repr=False)
    seg_b: np.ndarray = field(init=False, repr=False)
    seg_lane: np.ndarray = field(init=False, repr=False)
    seg_s: np.ndarray = field(init=False, repr=False)
    grid_origin: np.ndarray = field(init=False, repr=False)
    grid_shape: tuple[int, int] = field(init=False, repr=False)
    grid_offsets: np.ndarray = field(init=False, repr=False)
    grid_items: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {lid: i for i, lid in enumerate(self.lane_ids)}
        self._build_segment_index()

    # ----------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.lane_ids)

    def polyline(self, lane: int) -> np.ndarray:
        return self.points[self.offsets[lane] : self.offsets[lane + 1]]

    def successors(self, lane: int) -> np.ndarray:
        return self.succ[self.succ_offsets[lane] : self.succ_offsets[lane + 1]]

    def lane(self, lane_id: str) -> int:
        try:
            return self.index[lane_id]
        except KeyError:
            raise MapError(f"lane {lane_id!r} is not in network {self.net_path}") from None

    def carla_to_world(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        out = np.empty_like(xy)
        out[..., 0] = xy[..., 0] + self.net_offset[0]
        out[..., 1] = -xy[..., 1] + self.net_offset[1]
        return out

    def world_to_carla(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        out = np.empty_like(xy)
        out[..., 0] = xy[..., 0] - self.net_offset[0]
        out[..., 1] = -(xy[..., 1] - self.net_offset[1])
        return out

    @staticmethod
    def carla_yaw_to_world(yaw_deg: float) -> float:
        """CARLA yaw (deg, clockwise seen from above because y points south) -> world yaw (rad)."""
        return -math.radians(yaw_deg)

    # ------------------------------------------------------------------------- spatial queries
    def _build_segment_index(self) -> None:
        a, b, lane_of, s0 = [], [], [], []
        for i in range(len(self.lane_ids)):
            pl = self.polyline(i)
            if len(pl) < 2:
                continue
            seg_len = np.linalg.norm(np.diff(pl, axis=0), axis=1)
            a.append(pl[:-1])
            b.append(pl[1:])
            lane_of.append(np.full(len(pl) - 1, i, np.int32))
            s0.append(np.concatenate([[0.0], np.cumsum(seg_len)[:-1]]))
        self.seg_a = np.concatenate(a) if a else np.zeros((0, 2))
        self.seg_b = np.concatenate(b) if b else np.zeros((0, 2))
        self.seg_lane = np.concatenate(lane_of) if lane_of else np.zeros(0, np.int32)
        self.seg_s = np.concatenate(s0) if s0 else np.zeros(0)
        lo = np.minimum(self.seg_a, self.seg_b).min(axis=0) - GRID_CELL if len(self.seg_a) else np.zeros(2)
        hi = np.maximum(self.seg_a, self.seg_b).max(axis=0) + GRID_CELL if len(self.seg_a) else np.ones(2)
        shape = (int((hi[0] - lo[0]) // GRID_CELL) + 1, int((hi[1] - lo[1]) // GRID_CELL) + 1)
        self.grid_origin, self.grid_shape = lo, shape
        self.grid_offsets, self.grid_items = _build_grid(
            self.seg_a, self.seg_b, lo, shape[0], shape[1], GRID_CELL
        )

    def nearest_lanes(
        self, x: float, y: float, radius: float = 5.0, yaw: float | None = None, drivable_only: bool = True
    ) -> list[tuple[int, float, float, float]]:
        """Lanes within `radius` of (x, y), best first, as (lane, distance, s along lane, lane yaw there).

        With `yaw`, lanes whose direction differs by more than 90 degrees are dropped and a heading
        mismatch adds to the ranking, so the lane the vehicle drives in wins over the opposite one.
        """
        mask = self.drivable if drivable_only else np.ones(len(self.lane_ids), np.bool_)
        found = _query(
            x,
            y,
            radius,
            self.seg_a,
            self.seg_b,
            self.seg_lane,
            self.seg_s,
            mask,
            self.grid_origin,
            self.grid_shape[0],
            self.grid_shape[1],
            GRID_CELL,
            self.grid_offsets,
            self.grid_items,
        )
        best: dict[int, tuple[float, float, float, float]] = {}
        for lane, dist, s, lyaw in found:
            lane = int(lane)
            score = dist
            if yaw is not None:
                dyaw = abs(math.atan2(math.sin(yaw - lyaw), math.cos(yaw - lyaw)))
                if dyaw > math.pi / 2:
                    continue
                score = dist + 2.0 * dyaw
            if lane not in best or score < best[lane][0]:
                best[lane] = (score, dist, s, lyaw)
        ranked = sorted(best.items(), key=lambda kv: kv[1][0])
        return [(lane, v[1], v[2], v[3]) for lane, v in ranked]

    def lane_ends(self) -> tuple[np.ndarray, np.ndarray]:
        """Last centre point (L, 2) and heading of the last segment (L,) of every lane."""
        last = np.maximum(self.offsets[1:] - 1, 0)
        prev = np.maximum(self.offsets[1:] - 2, self.offsets[:-1])
        d = self.points[last] - self.points[prev]
        return self.points[last].copy(), np.arctan2(d[:, 1], d[:, 0])

    def stop_lines(self, lanes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For lanes ending at a stop (light or sign): where the pole stands, 1 m right of the lane's
        end (K, 2), and the stop line across the lane's end (K, 2, 2)."""
        lanes = np.asarray(lanes, np.int64)
        end, yaw = self.lane_ends()
        end, yaw = end[lanes], yaw[lanes]
        right = np.stack([np.sin(yaw), -np.cos(yaw)], axis=1)
        hw = 0.5 * self.width[lanes][:, None]
        line = np.stack([end + right * hw, end - right * hw], axis=1)
        return end + right * (hw + 1.0), line

    def position_on_lane(self, lane: int, s: float) -> tuple[float, float, float]:
        """(x, y, yaw) at arc length s along the lane centre (clamped to the lane)."""
        pl = self.polyline(lane)
        seg = np.linalg.norm(np.diff(pl, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        s = min(max(s, 0.0), cum[-1])
        k = int(np.searchsorted(cum, s, side="right") - 1)
        k = min(max(k, 0), len(seg) - 1)
        t = 0.0 if seg[k] == 0 else (s - cum[k]) / seg[k]
        p = pl[k] + t * (pl[k + 1] - pl[k])
        d = pl[k + 1] - pl[k]
        return float(p[0]), float(p[1]), math.atan2(d[1], d[0])


@numba.njit(cache=True)
def _build_grid(seg_a, seg_b, origin, nx, ny, cell):  # pragma: no cover - numba
    n = seg_a.shape[0]
    counts = np.zeros(nx * ny + 1, np.int64)
    for pass_ in range(2):
        if pass_ == 1:
            for i in range(nx * ny):
                counts[i + 1] += counts[i]
            items = np.empty(counts[nx * ny], np.int32)
            fill = counts[:-1].copy()
        for k in range(n):
            x0 = min(seg_a[k, 0], seg_b[k, 0])
            x1 = max(seg_a[k, 0], seg_b[k, 0])
            y0 = min(seg_a[k, 1], seg_b[k, 1])
            y1 = max(seg_a[k, 1], seg_b[k, 1])
            i0 = int((x0 - origin[0]) // cell)
            i1 = int((x1 - origin[0]) // cell)
            j0 = int((y0 - origin[1]) // cell)
            j1 = int((y1 - origin[1]) // cell)
            for i in range(i0, i1 + 1):
                for j in range(j0, j1 + 1):
                    c = i * ny + j
                    if pass_ == 0:
                        counts[c + 1] += 1
                    else:
                        items[fill[c]] = k
                        fill[c] += 1
    return counts, items


@numba.njit(cache=True)
def _query(
    x, y, radius, seg_a, seg_b, seg_lane, seg_s, mask, origin, nx, ny, cell, offsets, items
):  # pragma: no cover
    out = []
    r = int(radius // cell) + 1
    ci = int((x - origin[0]) // cell)
    cj = int((y - origin[1]) // cell)
    for i in range(max(ci - r, 0), min(ci + r, nx - 1) + 1):
        for j in range(max(cj - r, 0), min(cj + r, ny - 1) + 1):
            c = i * ny + j
            for q in range(offsets[c], offsets[c + 1]):
                k = items[q]
                lane = seg_lane[k]
                if not mask[lane]:
                    continue
                ax, ay = seg_a[k, 0], seg_a[k, 1]
                dx, dy = seg_b[k, 0] - ax, seg_b[k, 1] - ay
                ll = dx * dx + dy * dy
                t = 0.0
                if ll > 0:
                    t = ((x - ax) * dx + (y - ay) * dy) / ll
                    t = min(max(t, 0.0), 1.0)
                px, py = ax + t * dx, ay + t * dy
                d = math.hypot(x - px, y - py)
                if d <= radius:
                    out.append((float(lane), d, seg_s[k] + t * math.sqrt(ll), math.atan2(dy, dx)))
    return out


def load_lane_graph(net_path: str | Path) -> LaneGraph:
    """Read a SUMO .net.xml into a `LaneGraph`. Raises MapError on a missing or malformed file."""
    net_path = Path(net_path)
    if not net_path.is_file():
        raise MapError(f"network file not found: {net_path}")
    try:
        root = ET.parse(net_path).getroot()
    except ET.ParseError as exc:
        raise MapError(f"malformed network XML in {net_path}: {exc}") from None
    if root.tag != "net":
        raise MapError(f"{net_path} is not a SUMO network (root element <{root.tag}>, expected <net>)")

    loc = root.find("location")
    offset = np.zeros(2)
    bounds = np.zeros(4)
    if loc is not None:
        offset = np.array([float(v) for v in loc.get("netOffset", "0,0").split(",")])
        bounds = np.array([float(v) for v in loc.get("convBoundary", "0,0,0,0").split(",")])

    lane_ids: list[str] = []
    edge_of: list[str] = []
    polylines: list[np.ndarray] = []
    width, length, speed, internal, sidewalk, crossing, drivable, lindex = [], [], [], [], [], [], [], []
    edge_lanes: dict[str, list[int]] = {}
    for edge in root.iter("edge"):
        eid = edge.get("id", "")
        func = edge.get("function", "normal")
        if func == "walkingarea":
            continue
        for lane in edge.iter("lane"):
            i = len(lane_ids)
            lane_ids.append(lane.get("id", ""))
            edge_of.append(eid)
            polylines.append(_parse_shape(lane.get("shape", "")))
            width.append(float(lane.get("width", "3.2")))
            length.append(float(lane.get("length", "0")))
            speed.append(float(lane.get("speed", "13.89")))
            internal.append(func == "internal")
            allow = lane.get("allow", "")
            disallow = lane.get("disallow", "")
            ped_only = allow.strip() == "pedestrian"
            sidewalk.append(ped_only and func != "crossing")
            crossing.append(func == "crossing")
            cars = (
                not allow or "passenger" in allow.split() or allow == "all"
            ) and "passenger" not in disallow.split()
            drivable.append(bool(cars) and func != "crossing" and not ped_only)
            lindex.append(int(lane.get("index", "0")))
            edge_lanes.setdefault(eid, []).append(i)
    n = len(lane_ids)
    if n == 0:
        raise MapError(f"network {net_path} has no lanes")
    index = {lid: i for i, lid in enumerate(lane_ids)}

    left = np.full(n, -1, np.int32)
    right = np.full(n, -1, np.int32)
    for lanes in edge_lanes.values():
        ordered = sorted(lanes, key=lambda i: lindex[i])
        drive = [i for i in ordered if drivable[i]]
        for a, b in itertools.pairwise(drive):
            left[a], right[b] = b, a

    succ_lists: list[list[int]] = [[] for _ in range(n)]
    tl_ids: list[str] = []
    tl_link, tl_from, tl_via = [], [], []
    stop_lanes: set[int] = set()
    for con in root.iter("connection"):
        frm, to = con.get("from", ""), con.get("to", "")
        fl, tl_ = con.get("fromLane"), con.get("toLane")
        src = index.get(f"{frm}_{fl}")
        dst = index.get(f"{to}_{tl_}")
        if src is None or dst is None:
            continue
        via = con.get("via")
        vidx = index.get(via) if via else None
        nxt = vidx if vidx is not None else dst
        if nxt not in succ_lists[src]:
            succ_lists[src].append(nxt)
        if not frm.startswith(":") and vidx is not None:
            if con.get("tl"):
                tl_ids.append(con.get("tl", ""))
                tl_link.append(int(con.get("linkIndex", "0")))
                tl_from.append(src)
                tl_via.append(vidx)
            if con.get("state") in ("s", "w"):
                stop_lanes.add(src)
    succ_offsets = np.zeros(n + 1, np.int64)
    succ_offsets[1:] = np.cumsum([len(s) for s in succ_lists])
    succ = np.asarray([j for s in succ_lists for j in s], dtype=np.int32)

    j_ids, j_polys, j_types = [], [], []
    for j in root.iter("junction"):
        if j.get("type") == "internal" or not j.get("shape"):
            continue
        j_ids.append(j.get("id", ""))
        j_polys.append(_parse_shape(j.get("shape", "")))
        j_types.append(j.get("type", ""))

    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.cumsum([len(p) for p in polylines])
    return LaneGraph(
        net_path=str(net_path),
        lane_ids=lane_ids,
        edge_of_lane=edge_of,
        points=np.concatenate(polylines),
        offsets=offsets,
        width=np.asarray(width),
        length=np.asarray(length),
        speed_limit=np.asarray(speed),
        is_internal=np.asarray(internal, np.bool_),
        is_sidewalk=np.asarray(sidewalk, np.bool_),
        is_crossing=np.asarray(crossing, np.bool_),
        drivable=np.asarray(drivable, np.bool_),
        lane_index=np.asarray(lindex, np.int32),
        left=left,
        right=right,
        succ_offsets=succ_offsets,
        succ=succ,
        junction_ids=j_ids,
        junction_polygons=j_polys,
        junction_type=j_types,
        net_offset=offset,
        bounds=bounds,
        tl_ids=tl_ids,
        tl_link_index=np.asarray(tl_link, np.int32),
        tl_from_lane=np.asarray(tl_from, np.int32),
        tl_via_lane=np.asarray(tl_via, np.int32),
        stop_lanes=np.asarray(sorted(stop_lanes), np.int32),
    )
