"""Name-or-import-path lookup shared by the plug-in points (agents, takeover triggers, reward terms).

Each plug-in point keeps a registry of built-in entries by name; users add their own either by
registering them or by naming them as `"my_pkg.module:attribute"`, so nothing in the project changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def resolve(spec: str, registry: Mapping[str, Any], what: str, error: type[Exception] = ValueError) -> Any:
    """The entry `spec` names: registered in `registry`, or the attribute at import path `module:attr`.
    Errors (of type `error`) name `what` was asked for and list the registered names."""
    if spec in registry:
        return registry[spec]
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise error(f"cannot import {what} {spec!r}: {exc}") from None
    raise error(
        f"unknown {what} {spec!r}; registered: {', '.join(sorted(registry))} (or give an import path "
        "'module:attribute')"
    )
