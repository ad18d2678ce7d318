"""Training steps in which skipped samples (unreadable clouds, frames with a bad pose) left some or all DDP ranks
without data.

Under DDP a rank that simply skips such a step hangs the others: they wait in the all-reduces of the synchronised
BatchNorm, of a gathered loss and of DDP's gradients (and Lightning refuses a ``training_step`` returning None on
several processes). ``EmptyStepsMixin`` makes every rank take every step:

- ``on_train_batch_start`` counts the batch's samples over all ranks (``step_samples``; one small all-gather);
- no rank has a sample: ``training_step`` returns ``zero_weight_loss()`` (0 × the sum of the trainable parameters:
  no network runs anywhere, DDP all-reduces zero gradients) and ``optimizer_step`` runs the closure but skips the
  update, so weights and optimizer state stay as they are, as when one process skips a step;
- this rank has none, others do: the module's ``training_step`` runs every trainable network on an empty or
  placeholder input with a loss of weight 0 (``lang3d.training.sync_batchnorm.rows_left_out`` keeps a placeholder out of
  the BatchNorm statistics), so the rank joins every collective and adds nothing to the others' results.
"""
from __future__ import annotations

import torch

from lang3d.training.distributed import row_counts


class EmptyStepsMixin:
    """Mixin for a LightningModule (put it before ``L.LightningModule``) whose training batches may hold no sample;
    the module defines ``samples_in_batch(batch) -> int`` and asks ``samples_on_all_ranks(batch)`` in its
    ``training_step``."""

    step_samples: int | None = None  # samples of the current training batch over all ranks, during its step
    _samples_to_apply: int = 0       # samples since the last optimizer update, over all ranks (accumulation)

    def samples_in_batch(self, batch: dict) -> int:
        raise NotImplementedError

    def samples_on_all_ranks(self, batch: dict) -> int:
        """The batch's samples summed over the ranks: counted once per step by ``on_train_batch_start`` during
        fit, else here (a collective under DDP)."""
        if self.step_samples is not None:
            return self.step_samples
        return sum(row_counts(self.samples_in_batch(batch), self.device))

    def on_train_batch_start(self, batch: dict, batch_idx: int):
        self.step_samples = None
        self.step_samples = self.samples_on_all_ranks(batch)
        self._samples_to_apply += self.step_samples
        return super().on_train_batch_start(batch, batch_idx)

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        self.step_samples = None
        super().on_train_batch_end(outputs, batch, batch_idx)

    def zero_weight_loss(self) -> torch.Tensor:
        """0 × Σ trainable parameters: every parameter gets a zero gradient, no network runs."""
        return 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        samples, self._samples_to_apply = self._samples_to_apply, 0
        if samples == 0:   # no sample on any rank since the last update: forward and backward, no update
            optimizer_closure()
            return
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
