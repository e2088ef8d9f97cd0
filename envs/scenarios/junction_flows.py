"""Merging scenarios at junctions and interurban roads: flows of vehicles to turn into, cross or join."""

from __future__ import annotations
