"""Bird's-eye-view occupancy ahead of the ego: the target of the VLA's auxiliary perception head.

A camera-only policy has to find the objects in its path before it can brake for them, and imitation
alone teaches the vision encoder that only through the waypoint losses: the few frames where an object
ahead changes the expert's speed. An auxiliary BEV loss (as in TransFuser or InterFuser) asks the encoder
for every object in view on every frame. The head is used in training only; driving never calls it.

The grid covers BEV_AHEAD m ahead of the ego centre and BEV_HALF_WIDTH m to each side in square cells of
BEV_CELL m, one channel per object class (BEV_CLASSES). A cell is occupied when an agent's box, grown by
half a cell, covers its centre (so a pedestrian narrower than a cell still marks the cell it stands in).
"""

from __future__ import annotations

import numpy as np

from envs.geometry import to_ego_frame
from envs.scene import AgentKind

BEV_AHEAD = 32.0  # m
BEV_HALF_WIDTH = 8.0  # m
BEV_CELL = 2.0  # m
BEV_ROWS = int(BEV_AHEAD / BEV_CELL)  # along x (ahead), row 0 nearest
BEV_COLS = int(2 * BEV_HALF_WIDTH / BEV_CELL)  # along y (left positive), column 0 rightmost
BEV_CLASSES = {
    "vehicle": (AgentKind.VEHICLE, AgentKind.EMERGENCY, AgentKind.PARKED_VEHICLE),
    "vulnerable": (AgentKind.PEDESTRIAN, AgentKind.BICYCLE),
    "static": (AgentKind.STATIC, AgentKind.CONE),
}
BEV_SHAPE = (len(BEV_CLASSES), BEV_ROWS, BEV_COLS)

_CELL_X = (np.arange(BEV_ROWS) + 0.5) * BEV_CELL
_CELL_Y = (np.arange(BEV_COLS) + 0.5) * BEV_CELL - BEV_HALF_WIDTH
_CELLS = np.stack([a.ravel() for a in np.meshgrid(_CELL_X, _CELL_Y, indexing="ij")], axis=-1)  # (R*C, 2)
_CHANNEL_OF_KIND = {int(k): c for c, kinds in enumerate(BEV_CLASSES.values()) for k in kinds}


def bev_occupancy(ego: np.ndarray, agent_kind: np.ndarray, agent_box: np.ndarray) -> np.ndarray:
    """(C, ROWS, COLS) float32 occupancy from a scene snapshot: `ego` (x, y, yaw, ...) and the agents'
    kinds and world boxes (x, y, yaw, half_length, half_width), as `envs.segments.Frame` stores them."""
    grid = np.zeros((len(BEV_CLASSES), BEV_ROWS * BEV_COLS), np.float32)
    boxes = np.asarray(agent_box, np.float64).reshape(-1, 5)
    if not len(boxes):
        return grid.reshape(BEV_SHAPE)
    eyaw = float(ego[2])
    ax, ay = to_ego_frame(boxes[:, :2], float(ego[0]), float(ego[1]), eyaw).T  # agent centres, ego frame
    reach = np.hypot(boxes[:, 3], boxes[:, 4]) + BEV_CELL
    near = (ax > -reach) & (ax < BEV_AHEAD + reach) & (np.abs(ay) < BEV_HALF_WIDTH + reach)
    for k in np.flatnonzero(near):
        channel = _CHANNEL_OF_KIND.get(int(agent_kind[k]))
        if channel is None:
            continue
        lx, ly = to_ego_frame(_CELLS, ax[k], ay[k], boxes[k, 2] - eyaw).T  # cell centres, agent's frame
        half = 0.5 * BEV_CELL
        inside = (np.abs(lx) <= boxes[k, 3] + half) & (np.abs(ly) <= boxes[k, 4] + half)
        grid[channel, inside] = 1.0
    return grid.reshape(BEV_SHAPE)
