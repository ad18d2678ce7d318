"""Data loaders that shard across DDP ranks and reshuffle deterministically per epoch.

Lightning calls ``set_epoch`` on the sampler every epoch, so the order of epoch e depends only on
(seed, e): a run resumed from a checkpoint sees the same batches as an uninterrupted one. The samplers pass the
epoch on to an ``EpochSeededDataset``, whose per-sample random draws (augmentations, view choice) then depend
only on (seed, epoch, index) as well. Evaluation loaders
(``shuffle=False``) split the samples without padding, so under DDP every sample is scored exactly once.

Training loaders are resumable mid-epoch: Lightning stores their ``state_dict`` (epoch, batches done) in every
checkpoint and hands it back on resume, and the sampler then skips the samples of the batches already trained on,
so a run killed mid-epoch and resumed sees exactly the batches of an uninterrupted one.
"""
from __future__ import annotations

import zlib
from typing import Callable, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSeededDataset(Dataset):
    """Base for datasets with per-sample randomness: ``rng(index)`` is seeded with (seed, epoch, index). The
    epoch lives in shared memory, so DataLoader worker processes see ``set_epoch`` too."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(self._epoch), index])


class _ForwardEpoch:
    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if isinstance(self.dataset, EpochSeededDataset):
            self.dataset.set_epoch(epoch)


class _TrainSampler(_ForwardEpoch, DistributedSampler):
    """Shuffled per (seed, epoch), padded to equal shards. ``resume(epoch, n)``: the next pass over ``epoch``
    starts after its first n samples (once)."""

    _resume: tuple[int, int] | None = None

    def resume(self, epoch: int, num_samples_done: int) -> None:
        self._resume = (epoch, num_samples_done)

    def __iter__(self):
        indices = list(super().__iter__())
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1]:]
        self._resume = None
        return iter(indices)


class _ResumableLoader(DataLoader):
    """A training DataLoader Lightning can checkpoint: ``state_dict`` = (epoch, batches this epoch the trainer has
    processed); ``load_state_dict`` makes the sampler skip those batches' samples."""

    def __init__(self, *args, trainer: L.Trainer, **kwargs):
        super().__init__(*args, **kwargs)
        self._trainer = trainer

    def state_dict(self) -> dict:
        done = self._trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": int(self.sampler.epoch), "batches_done": int(done)}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.resume(state["epoch"], state["batches_done"] * self.batch_size)


class _EvalSampler(_ForwardEpoch, UnrepeatedDistributedSampler):
    """In order, unpadded: every sample on exactly one rank."""


def sharded_loader(dataset: Dataset, trainer: L.Trainer | None, batch_size: int, shuffle: bool, seed: int,
                   num_workers: int, collate_fn: Callable, drop_last: bool = False) -> DataLoader:
    """A DataLoader whose sampler holds this rank's shard (world size 1 without a trainer); with a trainer, a
    shuffled (training) loader resumes mid-epoch."""
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler_type = _TrainSampler if shuffle else _EvalSampler
    sampler = sampler_type(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
    # Workers are not persistent: each epoch forks them anew, so per-epoch dataset state (the epoch that seeds
    # augmentations, set through ``set_epoch``) reaches them.
    options = dict(batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate_fn,
                   drop_last=drop_last, persistent_workers=False, pin_memory=False)
    if shuffle and trainer is not None:
        return _ResumableLoader(dataset, trainer=trainer, **options)
    return DataLoader(dataset, **options)


def seed_from_names(names: Sequence[str]) -> int:
    """A 32-bit seed from sample names (CRC-32 of the names joined by "|"): evaluation randomness that follows the
    samples, so a checkpoint scores the same whatever the batch order or the number of DDP processes."""
    return zlib.crc32("|".join(names).encode())
