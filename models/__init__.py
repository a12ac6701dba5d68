"""BBCU binarized image-restoration networks, checkpoints and inference engine.

``from models import load_model`` is resolved lazily so that torch-free users of the package (the
HTTP front end reading the catalogue) never import torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_model", "load_for_task", "RestorationModel"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from models import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
