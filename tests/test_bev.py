"""BEV occupancy targets of the VLA's auxiliary perception head."""

from __future__ import annotations

import math

import numpy as np

from envs.scene import AgentKind
from policies.bev import BEV_CELL, BEV_CLASSES, BEV_HALF_WIDTH, BEV_SHAPE, bev_occupancy

CHANNEL = {name: c for c, name in enumerate(BEV_CLASSES)}


def cell_of(x: float, y: float) -> tuple[int, int]:
    return int(x // BEV_CELL), int((y + BEV_HALF_WIDTH) // BEV_CELL)


def test_objects_fill_the_cells_they_cover_in_their_class_channel():
    ego = np.array([100.0, 50.0, 0.0, 5.0])
    kinds = np.array([AgentKind.VEHICLE, AgentKind.PEDESTRIAN, AgentKind.CONE, AgentKind.VEHICLE], np.int8)
    boxes = np.array([
        [111.0, 50.0, 0.0, 2.4, 1.0],  # a car 11 m straight ahead
        [107.0, 53.0, 0.0, 0.3, 0.3],  # a pedestrian 7 m ahead, 3 m to the left
        [121.0, 45.0, 0.0, 0.2, 0.2],  # a cone 21 m ahead, 5 m to the right
        [90.0, 50.0, 0.0, 2.4, 1.0],  # a car behind: out of the grid
    ])  # fmt: skip
    grid = bev_occupancy(ego, kinds, boxes)
    assert grid.shape == BEV_SHAPE and grid.dtype == np.float32
    car = grid[CHANNEL["vehicle"]]
    # the car covers x 8.6..13.4 (cells 4..6) and y -1..1 (the two centre columns)
    assert car[4:7, cell_of(0, -0.5)[1]].all() and car[4:7, cell_of(0, 0.5)[1]].all()
    assert car.sum() == 6  # nothing of the car behind
    assert grid[CHANNEL["vulnerable"]][cell_of(7.0, 3.0)] == 1 and grid[CHANNEL["vulnerable"]].sum() == 1
    assert grid[CHANNEL["static"]][cell_of(21.0, -5.0)] == 1 and grid[CHANNEL["static"]].sum() == 1


def test_occupancy_is_in_the_ego_frame():
    # the same scene turned by 90 degrees about the ego gives the same grid
    kinds = np.array([AgentKind.BICYCLE, AgentKind.PARKED_VEHICLE], np.int8)
    rel = np.array([[15.0, -4.0, 0.3, 0.9, 0.4], [7.0, 5.0, 1.2, 2.2, 0.9]])
    straight = bev_occupancy(np.zeros(4), kinds, rel)
    yaw = math.pi / 2
    c, s = math.cos(yaw), math.sin(yaw)
    turned = rel.copy()
    turned[:, 0], turned[:, 1] = 3.0 + c * rel[:, 0] - s * rel[:, 1], -2.0 + s * rel[:, 0] + c * rel[:, 1]
    turned[:, 2] += yaw
    np.testing.assert_array_equal(bev_occupancy(np.array([3.0, -2.0, yaw, 0.0]), kinds, turned), straight)
    assert straight[CHANNEL["vulnerable"]].sum() >= 1 and straight[CHANNEL["vehicle"]].sum() >= 4


def test_empty_scene_and_unknown_kinds_give_an_empty_grid():
    assert not bev_occupancy(np.zeros(4), np.zeros(0, np.int8), np.zeros((0, 5))).any()
    assert not bev_occupancy(np.zeros(4), np.array([99], np.int8), np.array([[5.0, 0, 0, 1, 1]])).any()
