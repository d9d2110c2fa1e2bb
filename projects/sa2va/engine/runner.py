"""mmengine ``Runner`` with the two changes Sa2VA training needs (mmengine 0.10.6).

* CPU ranks under torchrun: mmengine's ``init_dist`` always calls ``torch.cuda.set_device``; on a
  machine without a GPU the process group is initialised here with gloo instead.
* Checkpoints hold trainable tensors only: loading (``load_from`` / ``--resume``) goes through
  ``Sa2VAModel.load_state_dict`` with strict key checking and ``torch.load(weights_only=True)``,
  not through mmengine's non-strict loader.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..checkpoint.safe_load import load_checkpoint_file, trainable_state_from_checkpoint


@RUNNERS.register_module()
class Sa2VARunner(Runner):
    """``Runner`` for Sa2VA: gloo on CPU, strict trainable-only checkpoint loading."""

    def setup_env(self, env_cfg: dict) -> None:
        if self._distributed and not dist.is_initialized() and not torch.cuda.is_available():
            dist.init_process_group(backend="gloo")
            os.environ.setdefault("LOCAL_RANK", "0")
        super().setup_env(env_cfg)

    def load_checkpoint(
        self,
        filename: str,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        revise_keys: list | None = None,
    ) -> dict:
        """Load trainable tensors from ``filename`` into the model; any key mismatch is an error."""
        checkpoint = load_checkpoint_file(filename, map_location=map_location)
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        state = trainable_state_from_checkpoint(checkpoint)
        try:
            model.load_state_dict(state, strict=True)
        except KeyError as e:
            raise KeyError(f"{filename}: {e}") from None
        self._has_loaded = True
        self.logger.info(f"Loaded {len(state)} trainable tensors from {filename}")
        return checkpoint
