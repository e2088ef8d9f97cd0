"""Junction scenarios about right of way: lights, stop signs, vehicles running red or taking priority."""

from __future__ import annotations
