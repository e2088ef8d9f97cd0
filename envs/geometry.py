"""Planar geometry kernels: oriented boxes, segments, polygons, polylines and the ego frame.

Conventions follow `envs.scene`: world frame x east, y north (metres), yaw in radians counter-clockwise
from +x, boxes are `(x, y, yaw, half_length, half_width)` rows centred on the box centre. The ego frame
has x forward and y to the left.

The kernels are Numba `@njit(cache=True)` functions so that other kernels (hazard forecasts, rollouts)
can call them; they are also callable from Python with float64 NumPy arrays. Overlap tests count
touching boxes as overlapping (the separation test is strict).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# ----------------------------------------------------------------------------------------- boxes


@njit(cache=True)
def box_corners(box: np.ndarray) -> np.ndarray:
    """The 4 corners of one box, counter-clockwise from front-left: FL, RL, RR, FR. Shape (4, 2)."""
    c, s = math.cos(box[2]), math.sin(box[2])
    hl, hw = box[3], box[4]
    out = np.empty((4, 2))
    signs_l = (1.0, -1.0, -1.0, 1.0)
    signs_w = (1.0, 1.0, -1.0, -1.0)
    for k in range(4):
        lx = signs_l[k] * hl
        ly = signs_w[k] * hw
        out[k, 0] = box[0] + c * lx - s * ly
        out[k, 1] = box[1] + s * lx + c * ly
    return out


@njit(cache=True)
def boxes_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners of N boxes, shape (N, 4, 2)."""
    n = boxes.shape[0]
    out = np.empty((n, 4, 2))
    for i in range(n):
        out[i] = box_corners(boxes[i])
    return out


@njit(cache=True)
def overlap_scalars(
    ax: float, ay: float, ayaw: float, al: float, aw: float,
    bx: float, by: float, byaw: float, bl: float, bw: float,
) -> bool:
    """Separating-axis test for two oriented rectangles given as scalars."""
    dx, dy = bx - ax, by - ay
    # Cheap rejection on the circumscribed circles.
    ra = math.sqrt(al * al + aw * aw)
    rb = math.sqrt(bl * bl + bw * bw)
    if dx * dx + dy * dy > (ra + rb) * (ra + rb):
        return False
    ca, sa = math.cos(ayaw), math.sin(ayaw)
    cb, sb = math.cos(byaw), math.sin(byaw)
    # Candidate axes: the two edge normals of each box (unit vectors).
    axes = ((ca, sa), (-sa, ca), (cb, sb), (-sb, cb))
    for k in range(4):
        ux, uy = axes[k]
        # Projection radius of each box on the axis: sum of |half extent * (box axis . u)|.
        pa = al * abs(ca * ux + sa * uy) + aw * abs(-sa * ux + ca * uy)
        pb = bl * abs(cb * ux + sb * uy) + bw * abs(-sb * ux + cb * uy)
        if abs(dx * ux + dy * uy) > pa + pb:
            return False
    return True


@njit(cache=True)
def boxes_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """True when oriented boxes a and b (5-vectors) intersect or touch (separating-axis theorem)."""
    return overlap_scalars(a[0], a[1], a[2], a[3], a[4], b[0], b[1], b[2], b[3], b[4])


@njit(cache=True)
def overlaps_any(box: np.ndarray, boxes: np.ndarray) -> int:
    """Index of the first row of `boxes` (N, 5) that overlaps `box`, or -1."""
    for i in range(boxes.shape[0]):
        if overlap_scalars(box[0], box[1], box[2], box[3], box[4],
                            boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3], boxes[i, 4]):
            return i
    return -1


@njit(cache=True)
def overlap_mask(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Boolean (N,): which rows of `boxes` overlap `box`."""
    n = boxes.shape[0]
    out = np.zeros(n, np.bool_)
    for i in range(n):
        out[i] = overlap_scalars(box[0], box[1], box[2], box[3], box[4],
                                  boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3], boxes[i, 4])
    return out


@njit(cache=True)
def overlap_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Boolean (N, M): overlap of every row of `boxes_a` (N, 5) with every row of `boxes_b` (M, 5)."""
    n, m = boxes_a.shape[0], boxes_b.shape[0]
    out = np.zeros((n, m), np.bool_)
    for i in range(n):
        a = boxes_a[i]
        for j in range(m):
            b = boxes_b[j]
            out[i, j] = overlap_scalars(a[0], a[1], a[2], a[3], a[4], b[0], b[1], b[2], b[3], b[4])
    return out


@njit(cache=True)
def pairwise_overlap(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Boolean (N,): overlap of row i of `boxes_a` with row i of `boxes_b` (both (N, 5))."""
    n = boxes_a.shape[0]
    out = np.zeros(n, np.bool_)
    for i in range(n):
        a, b = boxes_a[i], boxes_b[i]
        out[i] = overlap_scalars(a[0], a[1], a[2], a[3], a[4], b[0], b[1], b[2], b[3], b[4])
    return out


# ------------------------------------------------------------------------------ segments, polygons


@njit(cache=True)
def segment_intersects_box(p0: np.ndarray, p1: np.ndarray, box: np.ndarray) -> bool:
    """True when segment p0-p1 touches the oriented box (slab clipping in the box frame)."""
    c, s = math.cos(box[2]), math.sin(box[2])
    x0, y0 = p0[0] - box[0], p0[1] - box[1]
    x1, y1 = p1[0] - box[0], p1[1] - box[1]
    # Into the box frame (rotate by -yaw).
    u0, v0 = c * x0 + s * y0, -s * x0 + c * y0
    u1, v1 = c * x1 + s * y1, -s * x1 + c * y1
    t_lo, t_hi = 0.0, 1.0
    for axis in range(2):
        if axis == 0:
            start, delta, half = u0, u1 - u0, box[3]
        else:
            start, delta, half = v0, v1 - v0, box[4]
        if abs(delta) < 1e-12:
            if start < -half or start > half:
                return False
            continue
        ta = (-half - start) / delta
        tb = (half - start) / delta
        if ta > tb:
            ta, tb = tb, ta
        t_lo = max(t_lo, ta)
        t_hi = min(t_hi, tb)
        if t_lo > t_hi:
            return False
    return True


@njit(cache=True)
def _cross(ax: float, ay: float, bx: float, by: float) -> float:
    return ax * by - ay * bx


@njit(cache=True)
def segments_intersect(p0: np.ndarray, p1: np.ndarray, q0: np.ndarray, q1: np.ndarray) -> bool:
    """True when closed segments p0-p1 and q0-q1 share a point (collinear overlaps included)."""
    rx, ry = p1[0] - p0[0], p1[1] - p0[1]
    sx, sy = q1[0] - q0[0], q1[1] - q0[1]
    qpx, qpy = q0[0] - p0[0], q0[1] - p0[1]
    denom = _cross(rx, ry, sx, sy)
    eps = 1e-12
    if abs(denom) < eps:
        if abs(_cross(qpx, qpy, rx, ry)) > eps:
            return False  # parallel, not collinear
        rr = rx * rx + ry * ry
        if rr < eps:
            return qpx * qpx + qpy * qpy < eps or (
                abs(_cross(p0[0] - q0[0], p0[1] - q0[1], sx, sy)) < eps
                and min(q0[0], q1[0]) - eps <= p0[0] <= max(q0[0], q1[0]) + eps
                and min(q0[1], q1[1]) - eps <= p0[1] <= max(q0[1], q1[1]) + eps
            )
        t0 = (qpx * rx + qpy * ry) / rr
        t1 = t0 + (sx * rx + sy * ry) / rr
        lo, hi = min(t0, t1), max(t0, t1)
        return hi >= 0.0 and lo <= 1.0
    t = _cross(qpx, qpy, sx, sy) / denom
    u = _cross(qpx, qpy, rx, ry) / denom
    return -eps <= t <= 1.0 + eps and -eps <= u <= 1.0 + eps


@njit(cache=True)
def segment_crosses_many(p0: np.ndarray, p1: np.ndarray, seg_a: np.ndarray, seg_b: np.ndarray) -> np.ndarray:
    """Boolean (N,): does segment p0-p1 intersect segment seg_a[i]-seg_b[i]? (seg_a, seg_b: (N, 2))."""
    n = seg_a.shape[0]
    out = np.zeros(n, np.bool_)
    for i in range(n):
        out[i] = segments_intersect(p0, p1, seg_a[i], seg_b[i])
    return out


@njit(cache=True)
def point_in_polygon(x: float, y: float, poly: np.ndarray) -> bool:
    """Even-odd ray casting for a simple polygon given as (K, 2) vertices (closing edge implied)."""
    inside = False
    k = poly.shape[0]
    j = k - 1
    for i in range(k):
        xi, yi = poly[i, 0], poly[i, 1]
        xj, yj = poly[j, 0], poly[j, 1]
        if (yi > y) != (yj > y):
            x_cross = xi + (y - yi) * (xj - xi) / (yj - yi)
            if x < x_cross:
                inside = not inside
        j = i
    return inside


# -------------------------------------------------------------------------------------- polylines


@njit(cache=True)
def polyline_frenet(
    points: np.ndarray, cum: np.ndarray, x: float, y: float, start: int, window: int
) -> tuple[int, float, float]:
    """Closest point on the polyline segments starting at indices [start, start + window].

    Returns (index of the nearest polyline vertex, arc length s of the projection, signed lateral
    offset: positive to the left of the polyline direction). Only segments in the window are searched,
    so callers get monotonic progress by passing their last index as `start`.
    """
    r = points.shape[0]
    if r == 0:
        return -1, 0.0, math.inf
    start = min(max(start, 0), r - 1)
    if r == 1:
        d = math.hypot(x - points[0, 0], y - points[0, 1])
        return 0, cum[0], d
    last_seg = min(start + max(window, 1), r - 1)  # exclusive bound on segment start index
    first_seg = min(start, r - 2)
    best_d2 = math.inf
    best_k, best_t, best_cross = first_seg, 0.0, 0.0
    for k in range(first_seg, max(last_seg, first_seg + 1)):
        ax, ay = points[k, 0], points[k, 1]
        dx, dy = points[k + 1, 0] - ax, points[k + 1, 1] - ay
        ll = dx * dx + dy * dy
        t = 0.0
        if ll > 0.0:
            t = ((x - ax) * dx + (y - ay) * dy) / ll
            t = min(max(t, 0.0), 1.0)
        px, py = ax + t * dx, ay + t * dy
        d2 = (x - px) * (x - px) + (y - py) * (y - py)
        if d2 < best_d2:
            best_d2, best_k, best_t = d2, k, t
            best_cross = dx * (y - ay) - dy * (x - ax)
    lat = math.sqrt(best_d2)
    if best_cross < 0.0:
        lat = -lat
    idx = best_k if best_t < 0.5 else best_k + 1
    s = cum[best_k] + best_t * (cum[best_k + 1] - cum[best_k])
    return idx, s, lat


@njit(cache=True)
def project_on_polyline(
    points: np.ndarray, cum: np.ndarray, x: float, y: float, start: int, window: int
) -> tuple[int, float]:
    """Windowed projection of (x, y) on a dense polyline: (nearest vertex index, distance >= 0).

    Segments starting at indices start .. start + window are searched (see `polyline_frenet`).
    """
    idx, _, lat = polyline_frenet(points, cum, x, y, start, window)
    return idx, abs(lat)


def polyline_cum_length(points: np.ndarray) -> np.ndarray:
    """Cumulative arc length (R,) of a (R, 2) polyline, starting at 0."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) == 0:
        return np.zeros(0)
    seg = np.hypot(*np.diff(points, axis=0).T)
    return np.concatenate([[0.0], np.cumsum(seg)])


# ---------------------------------------------------------------------------------------- frames


def to_ego_frame(points: np.ndarray, ego_x: float, ego_y: float, ego_yaw: float) -> np.ndarray:
    """World (..., 2) points -> ego frame (x forward, y left). Works for any leading shape."""
    p = np.asarray(points, dtype=np.float64)
    c, s = math.cos(ego_yaw), math.sin(ego_yaw)
    dx, dy = p[..., 0] - ego_x, p[..., 1] - ego_y
    return np.stack([c * dx + s * dy, -s * dx + c * dy], axis=-1)


def from_ego_frame(points: np.ndarray, ego_x: float, ego_y: float, ego_yaw: float) -> np.ndarray:
    """Ego-frame (..., 2) points (x forward, y left) -> world frame. Inverse of `to_ego_frame`."""
    p = np.asarray(points, dtype=np.float64)
    c, s = math.cos(ego_yaw), math.sin(ego_yaw)
    return np.stack([ego_x + c * p[..., 0] - s * p[..., 1], ego_y + s * p[..., 0] + c * p[..., 1]], axis=-1)


@njit(cache=True)
def to_ego_frame_nb(points: np.ndarray, ego_x: float, ego_y: float, ego_yaw: float) -> np.ndarray:
    """Numba form of `to_ego_frame` for (N, 2) arrays."""
    c, s = math.cos(ego_yaw), math.sin(ego_yaw)
    out = np.empty((points.shape[0], 2))
    for i in range(points.shape[0]):
        dx, dy = points[i, 0] - ego_x, points[i, 1] - ego_y
        out[i, 0] = c * dx + s * dy
        out[i, 1] = -s * dx + c * dy
    return out


@njit(cache=True)
def from_ego_frame_nb(points: np.ndarray, ego_x: float, ego_y: float, ego_yaw: float) -> np.ndarray:
    """Numba form of `from_ego_frame` for (N, 2) arrays."""
    c, s = math.cos(ego_yaw), math.sin(ego_yaw)
    out = np.empty((points.shape[0], 2))
    for i in range(points.shape[0]):
        out[i, 0] = ego_x + c * points[i, 0] - s * points[i, 1]
        out[i, 1] = ego_y + s * points[i, 0] + c * points[i, 1]
    return out


def wrap_angle(a: float | np.ndarray) -> float | np.ndarray:
    """Wrap angles to [-pi, pi)."""
    if isinstance(a, np.ndarray):
        return (a + np.pi) % (2.0 * np.pi) - np.pi
    return (a + math.pi) % (2.0 * math.pi) - math.pi


def as_boxes(boxes: np.ndarray | list) -> np.ndarray:
    """Coerce to a C-contiguous float64 (N, 5) array (the form the kernels compile for)."""
    return np.ascontiguousarray(np.asarray(boxes, dtype=np.float64).reshape(-1, 5))
