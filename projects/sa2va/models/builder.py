"""Build config dicts (``dict(type=..., **kwargs)``) into objects, the way mmengine/xtuner configs do."""

from __future__ import annotations

from typing import Any

from xtuner.registry import BUILDER


def build_component(cfg: Any) -> Any:
    """Build ``cfg`` if it is a config dict with a ``type``; return it unchanged otherwise."""
    if isinstance(cfg, dict) and "type" in cfg:
        return BUILDER.build(cfg)
    return cfg
