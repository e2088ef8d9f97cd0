"""Junction scenarios: flows to merge into or cross, vehicles running lights or taking priority."""

from __future__ import annotations
