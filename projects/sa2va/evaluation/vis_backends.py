"""A TensorBoard visualizer backend that is skipped, with one warning, where tensorboard is not installed.

mmengine 0.10.6 ``TensorboardVisBackend`` raises ``ImportError`` at the first logged scalar when
``torch.utils.tensorboard`` cannot be imported (e.g. on a GPU box without the ``tensorboard`` wheel),
which would stop training. :class:`OptionalTensorboardVisBackend` writes event files under
``<work_dir>/<timestamp>/vis_data/`` when it can and otherwise does nothing; the always-present
``LocalVisBackend`` (``scalars.json``) keeps the record either way.
"""

from __future__ import annotations

from typing import Any

from mmengine.logging import MMLogger
from mmengine.registry import VISBACKENDS
from mmengine.visualization import TensorboardVisBackend

__all__ = ["OptionalTensorboardVisBackend"]


class _NullWriter:
    """Accepts the ``SummaryWriter`` calls mmengine makes and drops them."""

    def add_text(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_image(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


@VISBACKENDS.register_module()
class OptionalTensorboardVisBackend(TensorboardVisBackend):
    """``TensorboardVisBackend`` that degrades to a no-op without tensorboard (see module docstring)."""

    def _init_env(self) -> None:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError as e:
            MMLogger.get_current_instance().warning(
                f"tensorboard is not importable ({e}); TensorBoard logging is off, scalars.json still written"
            )
            self._tensorboard = _NullWriter()
            self.available = False
            return
        super()._init_env()
        self.available = True
