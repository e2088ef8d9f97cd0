"""Box overlap, segment/polygon/polyline kernels, ego frame, and the ego's bicycle dynamics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.dynamics import (
    BRAKE_DECEL,
    DT,
    EgoDynamics,
    bicycle_step,
    carla_steer,
    longitudinal_accel,
    rollout_bicycle,
    rollout_controls,
    state_of,
)
from envs.geometry import (
    as_boxes,
    box_corners,
    boxes_corners,
    boxes_overlap,
    from_ego_frame,
    from_ego_frame_nb,
    overlap_mask,
    overlap_matrix,
    overlaps_any,
    pairwise_overlap,
    point_in_polygon,
    polyline_cum_length,
    polyline_frenet,
    project_on_polyline,
    segment_intersects_box,
    segments_intersect,
    to_ego_frame,
    to_ego_frame_nb,
)
from envs.scene import EgoState


def box(x: float, y: float, yaw: float, hl: float, hw: float) -> np.ndarray:
    return np.array([x, y, yaw, hl, hw], dtype=np.float64)


# ------------------------------------------------------------------------------------ boxes


def test_box_corners_ccw_from_front_left() -> None:
    c = box_corners(box(1.0, 2.0, math.pi / 2, 2.0, 1.0))
    # Heading north: the front-left corner is north-west of the centre.
    np.testing.assert_allclose(c, [[0.0, 4.0], [0.0, 0.0], [2.0, 0.0], [2.0, 4.0]], atol=1e-12)
    assert boxes_corners(as_boxes([[0, 0, 0, 1, 1], [1, 1, 0, 1, 1]])).shape == (2, 4, 2)


def test_overlap_axis_aligned_and_rotated() -> None:
    a = box(0, 0, 0, 2, 1)
    assert boxes_overlap(a, box(3.9, 0, 0, 2, 1))
    assert not boxes_overlap(a, box(4.1, 0, 0, 2, 1))
    assert boxes_overlap(a, box(4.0, 0, 0, 2, 1))  # touching counts
    # A box rotated 90 degrees: its half width now extends along x.
    assert boxes_overlap(a, box(2.9, 0, math.pi / 2, 2, 1))
    assert not boxes_overlap(a, box(3.1, 0, math.pi / 2, 2, 1))
    # Crossing bars (a plus sign): no corner of either is inside the other, yet they overlap.
    assert boxes_overlap(box(0, 0, 0, 5, 0.5), box(0, 0, math.pi / 2, 5, 0.5))


def test_overlap_diagonal_near_miss() -> None:
    # A thin bar along y = x; a small square below the diagonal whose bounding boxes and bounding circles
    # both overlap the bar's, but which the bar's own normal axis separates.
    bar = box(0, 0, math.pi / 4, 2.0, 0.5)
    miss = box(1.0, -0.5, 0.0, 0.3, 0.3)  # nearest corner (0.7, -0.2) is 0.636 m from the diagonal
    hit = box(0.9, -0.4, 0.0, 0.3, 0.3)  # nearest corner (0.6, -0.1) is 0.495 m from it
    assert not boxes_overlap(bar, miss)
    assert not boxes_overlap(miss, bar)
    assert boxes_overlap(bar, hit)
    assert boxes_overlap(hit, bar)
    # Two diamonds side by side, corners pointing at each other with a 2 cm gap.
    d = math.sqrt(2.0)
    assert not boxes_overlap(box(0, 0, math.pi / 4, 1, 1), box(2 * d + 0.02, 0, math.pi / 4, 1, 1))
    assert boxes_overlap(box(0, 0, math.pi / 4, 1, 1), box(2 * d - 0.02, 0, math.pi / 4, 1, 1))


def _polygons_intersect(pa: np.ndarray, pb: np.ndarray) -> bool:
    """Reference test for convex polygons: an edge pair crosses, or one contains a vertex of the other."""
    for i in range(4):
        for j in range(4):
            if segments_intersect(pa[i], pa[(i + 1) % 4], pb[j], pb[(j + 1) % 4]):
                return True
    return point_in_polygon(pa[0, 0], pa[0, 1], pb) or point_in_polygon(pb[0, 0], pb[0, 1], pa)


def test_overlap_matches_polygon_reference_on_random_boxes() -> None:
    rng = np.random.default_rng(0)
    n = 400
    a = np.column_stack([rng.uniform(-3, 3, n), rng.uniform(-3, 3, n), rng.uniform(-math.pi, math.pi, n),
                         rng.uniform(0.2, 2.5, n), rng.uniform(0.2, 1.2, n)])
    b = np.column_stack([rng.uniform(-3, 3, n), rng.uniform(-3, 3, n), rng.uniform(-math.pi, math.pi, n),
                         rng.uniform(0.2, 2.5, n), rng.uniform(0.2, 1.2, n)])
    got = pairwise_overlap(a, b)
    want = np.array([_polygons_intersect(box_corners(a[i]), box_corners(b[i])) for i in range(n)])
    assert 0.2 < want.mean() < 0.8  # both outcomes well represented
    np.testing.assert_array_equal(got, want)


def test_vectorised_forms_agree() -> None:
    rng = np.random.default_rng(1)
    a = np.column_stack([rng.uniform(-5, 5, (6, 2)), rng.uniform(-3, 3, 6), rng.uniform(0.5, 2, (6, 2))])
    b = np.column_stack([rng.uniform(-5, 5, (9, 2)), rng.uniform(-3, 3, 9), rng.uniform(0.5, 2, (9, 2))])
    m = overlap_matrix(a, b)
    assert m.shape == (6, 9)
    for i in range(6):
        np.testing.assert_array_equal(m[i], overlap_mask(a[i], b))
        first = overlaps_any(a[i], b)
        assert first == (int(np.flatnonzero(m[i])[0]) if m[i].any() else -1)
        for j in range(9):
            assert m[i, j] == boxes_overlap(a[i], b[j])
    assert overlaps_any(a[0], np.zeros((0, 5))) == -1
    assert overlap_matrix(a, np.zeros((0, 5))).shape == (6, 0)


# ------------------------------------------------------------------------ segments, polygons


def test_segment_intersects_box() -> None:
    b = box(0, 0, math.pi / 4, 2, 1)
    p = np.array
    assert segment_intersects_box(p([-5.0, 0.0]), p([5.0, 0.0]), b)  # straight through
    assert segment_intersects_box(p([0.1, 0.1]), p([0.2, 0.0]), b)  # fully inside
    assert not segment_intersects_box(p([-5.0, 3.0]), p([5.0, 3.0]), b)
    # Around the front-right corner: (1, -1) points out of the box there (its right-hand normal).
    far = box_corners(b)[3]
    out = np.array([1.0, -1.0])
    assert segment_intersects_box(far + 0.05 * out, far - 0.05 * out, b)
    assert not segment_intersects_box(far + 0.1 * out, far + 0.3 * out, b)
    # Degenerate segment (a point).
    assert segment_intersects_box(p([0.0, 0.0]), p([0.0, 0.0]), b)


def test_segments_and_polygon() -> None:
    p = np.array
    assert segments_intersect(p([0.0, 0.0]), p([2.0, 2.0]), p([0.0, 2.0]), p([2.0, 0.0]))
    assert not segments_intersect(p([0.0, 0.0]), p([1.0, 0.0]), p([0.0, 1.0]), p([1.0, 1.0]))
    assert segments_intersect(p([0.0, 0.0]), p([2.0, 0.0]), p([1.0, 0.0]), p([3.0, 0.0]))  # collinear
    assert segments_intersect(p([0.0, 0.0]), p([1.0, 0.0]), p([1.0, 0.0]), p([1.0, 5.0]))  # endpoint
    l_shape = np.array([[0, 0], [4, 0], [4, 1], [1, 1], [1, 4], [0, 4]], dtype=np.float64)
    assert point_in_polygon(0.5, 3.0, l_shape)
    assert point_in_polygon(3.0, 0.5, l_shape)
    assert not point_in_polygon(2.0, 2.0, l_shape)
    assert not point_in_polygon(-0.1, 0.5, l_shape)


def test_project_on_polyline_window_and_sign() -> None:
    # A hairpin: out along +x for 50 m, back along y = 10.
    out = np.column_stack([np.arange(0, 50.01, 0.1), np.zeros(501)])
    back = np.column_stack([np.arange(50, -0.01, -0.1), np.full(501, 10.0)])
    pts = np.concatenate([out, back[1:]])
    cum = polyline_cum_length(pts)
    # Near the return leg but searched from the start: the outbound leg within the window wins.
    idx, d = project_on_polyline(pts, cum, 20.0, 6.0, 0, 400)
    assert idx == 200 and d == pytest.approx(6.0)
    # Searched from the return leg: the nearer leg.
    idx, d = project_on_polyline(pts, cum, 20.0, 6.0, 600, 500)
    assert abs(idx - (500 + 300)) <= 1 and d == pytest.approx(4.0)
    # The window limits the search: from index 0 with a 10 m window, x = 30 maps to the window's end.
    idx, d = project_on_polyline(pts, cum, 30.0, 0.0, 0, 100)
    assert idx == 100 and d == pytest.approx(20.0)
    idx, s, lat = polyline_frenet(pts, cum, 12.34, 1.5, 0, 300)
    assert s == pytest.approx(12.34) and lat == pytest.approx(1.5)  # left of +x is positive
    _, _, lat = polyline_frenet(pts, cum, 12.34, -1.5, 0, 300)
    assert lat == pytest.approx(-1.5)
    # start beyond the end is clamped.
    idx, d = project_on_polyline(pts, cum, 0.0, 10.0, 10_000, 50)
    assert idx == len(pts) - 1 and d == pytest.approx(0.0, abs=1e-9)


def test_ego_frame_round_trip() -> None:
    ego = (10.0, 5.0, math.pi / 2)  # facing north
    pts = np.array([[10.0, 8.0], [7.0, 5.0]])
    local = to_ego_frame(pts, *ego)
    np.testing.assert_allclose(local, [[3.0, 0.0], [0.0, 3.0]], atol=1e-12)  # ahead; to the left
    np.testing.assert_allclose(from_ego_frame(local, *ego), pts, atol=1e-12)
    np.testing.assert_allclose(to_ego_frame_nb(pts, *ego), local, atol=1e-12)
    np.testing.assert_allclose(from_ego_frame_nb(local, *ego), pts, atol=1e-12)
    grid = np.random.default_rng(2).normal(size=(3, 4, 2))
    assert to_ego_frame(grid, 1.0, 2.0, 0.3).shape == (3, 4, 2)
    np.testing.assert_allclose(from_ego_frame(to_ego_frame(grid, 1.0, 2.0, 0.3), 1.0, 2.0, 0.3), grid)


# ------------------------------------------------------------------------------- dynamics


def test_bicycle_straight_line() -> None:
    s = np.array([0.0, 0.0, 0.0, 10.0])
    for _ in range(20):
        s = bicycle_step(s, 0.0, 0.0, DT)
    np.testing.assert_allclose(s, [10.0, 0.0, 0.0, 10.0], atol=1e-9)
    # Heading north-east.
    s = bicycle_step(np.array([1.0, 1.0, math.pi / 4, 2.0]), 0.0, 0.0, 0.5)
    np.testing.assert_allclose(s[:2], [1.0 + math.sqrt(0.5), 1.0 + math.sqrt(0.5)])


def test_bicycle_left_turn_increases_yaw() -> None:
    s = np.array([0.0, 0.0, 0.0, 8.0])
    yaws = []
    for _ in range(10):
        s = bicycle_step(s, 0.5, 0.0, DT)
        yaws.append(s[2])
    assert np.all(np.diff(yaws) > 0) and yaws[0] > 0
    assert s[1] > 0  # moved to the left (north)
    r = bicycle_step(np.array([0.0, 0.0, 0.0, 8.0]), -0.5, 0.0, DT)
    assert r[2] < 0 and r[1] < 0
    # Yaw rate follows v / lr * sin(beta) with beta = atan(lr / (lf + lr) * tan(0.3685 * steer)).
    beta = math.atan(1.4178 / (1.4178 - 0.0908) * math.tan(0.3685 * 0.5))
    s1 = bicycle_step(np.array([0.0, 0.0, 0.0, 8.0]), 0.5, 0.0, DT)
    assert s1[2] == pytest.approx(8.0 / 1.4178 * math.sin(beta) * DT)
    assert carla_steer(0.5) == -0.5
    # No motion at standstill, whatever the steer.
    still = np.array([1.0, 2.0, 0.3, 0.0])
    np.testing.assert_array_equal(bicycle_step(still, 1.0, 0.0, DT), still)


def test_full_brake_stopping_distance() -> None:
    dyn = EgoDynamics()
    ego = EgoState(0.0, 0.0, 0.0, 10.0)
    ticks = 0
    while ego.speed > 0.0:
        ego = dyn.step(ego, 0.0, 1.0, 0.0)
        ticks += 1
        assert ticks < 200
    analytic = 10.0**2 / (2 * BRAKE_DECEL)  # 10.10 m
    assert analytic - 0.2 < ego.x < analytic + 0.4  # explicit Euler adds about v * dt / 2
    assert ticks * DT == pytest.approx(10.0 / BRAKE_DECEL, abs=DT)
    # Stays stopped (no reverse) and reports zero acceleration once stopped.
    ego = dyn.step(ego, 0.0, 1.0, 0.0)
    assert ego.speed == 0.0 and ego.accel == 0.0


def test_longitudinal_model() -> None:
    assert longitudinal_accel(10.0, 0.0, 1.0) == pytest.approx(-BRAKE_DECEL)
    assert longitudinal_accel(10.0, 1.0, 1.0) == pytest.approx(-BRAKE_DECEL)  # brake wins
    assert longitudinal_accel(0.0, 0.0, 0.0) == 0.0
    assert -0.6 < longitudinal_accel(20.0, 0.0, 0.0) < -0.3  # coasting
    assert 3.0 < longitudinal_accel(0.0, 1.0, 0.0) <= 3.5
    assert longitudinal_accel(0.0, 2.0, -1.0) == longitudinal_accel(0.0, 1.0, 0.0)  # clipped
    dyn = EgoDynamics()
    ego = EgoState(0.0, 0.0, 0.0, 0.0)
    for _ in range(int(120 / DT)):  # two minutes at full throttle
        ego = dyn.step(ego, 1.0, 0.0, 0.0)
    assert 25.0 < ego.speed < 33.0  # bounded top speed
    with pytest.raises(ValueError):
        dyn.step(ego, float("nan"), 0.0, 0.0)


def test_ego_dynamics_fields() -> None:
    dyn = EgoDynamics()
    ego = EgoState(5.0, -2.0, 0.2, 6.0, half_length=2.0)
    new = dyn.step(ego, 0.5, 0.0, 2.0)
    assert ego.x == 5.0 and ego.speed == 6.0  # input untouched
    assert new.steer == 1.0  # clipped
    assert new.yaw_rate == pytest.approx((new.yaw - ego.yaw) / DT)
    assert new.accel == pytest.approx((new.speed - ego.speed) / DT)
    assert new.half_length == 2.0
    # Yaw wraps across +-pi.
    w = dyn.step(EgoState(0.0, 0.0, math.pi - 1e-3, 10.0), 0.0, 0.0, 1.0)
    assert -math.pi <= w.yaw < 0 and w.yaw_rate > 0


def test_rollouts_match_single_steps() -> None:
    states = np.array([[0.0, 0.0, 0.0, 10.0], [3.0, 4.0, 1.0, 5.0]])
    steer = np.array([0.3, -0.7])
    accel = np.array([1.0, -2.0])
    out = rollout_bicycle(states, steer, accel, 30)
    assert out.shape == (2, 30, 4)
    for i in range(2):
        s = states[i]
        for k in range(30):
            s = bicycle_step(s, steer[i], accel[i], DT)
            np.testing.assert_allclose(out[i, k], s)
    dyn = EgoDynamics()
    ego = EgoState(*states[1])
    ctl = rollout_controls(states[1:], np.array([0.6]), np.array([0.0]), np.array([-0.2]), 40)
    for k in range(40):
        ego = dyn.step(ego, 0.6, 0.0, -0.2)
        np.testing.assert_allclose(ctl[0, k], state_of(ego), atol=1e-12)
