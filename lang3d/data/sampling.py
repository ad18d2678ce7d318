"""Data loaders that shard across DDP ranks and reshuffle deterministically per epoch.

Lightning calls ``set_epoch`` on the sampler every epoch, so the order of epoch e depends only on
(seed, e): a run resumed from a checkpoint sees the same batches as an uninterrupted one. The samplers pass the
epoch on to an ``EpochSeededDataset``, whose per-sample random draws (augmentations, view choice) then depend
only on (seed, epoch, index) as well. Evaluation loaders
(``shuffle=False``) split the samples into consecutive blocks without padding, so under DDP every sample is scored
exactly once, and rows gathered from the ranks in rank order come in the dataset's order, as in one process: metrics
that depend on the order of their rows (a ranking breaks exact ties by gallery position) score the same.

A pass begins at its first batch (not at ``iter(loader)``), so it follows the epoch Lightning set last, in worker
processes too. The base seed of its worker processes comes from the loader's own generator, seeded by (seed,
epoch, rank). Like a stock DataLoader, a pass draws one number from the global torch generator when it begins, so
the global random stream (dropout and other model-side draws) stays the one a stock loader gives; that happens
after Lightning has restored a resumed run's random state, so a run resumed from an epoch's last step draws it
where the uninterrupted run did, and a pass that resumes an epoch mid-way does not draw it again (the restored
state already follows the draw made before the checkpoint).

Training loaders are resumable mid-epoch through Lightning's public stateful-loader protocol: Lightning stores
their ``state_dict`` (epoch, batches this loader has handed out in that epoch's pass) in every checkpoint and hands
it back with ``load_state_dict`` on resume; the next pass over that epoch then starts after those batches' samples,
so a run killed anywhere and resumed sees exactly the batches of an uninterrupted one.
"""
from __future__ import annotations

import zlib
from typing import Callable, Iterator, Sequence

import lightning as L
import numpy as np
import torch
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
    """Shuffled per (seed, epoch), padded to equal shards; the next pass leaves out its first ``start`` samples."""

    start = 0

    def __iter__(self):
        start, self.start = self.start, 0
        return iter(list(super().__iter__())[start:])


class _EvalSampler(_ForwardEpoch, DistributedSampler):
    """In order, unpadded, in consecutive blocks: of n samples and W ranks, rank r takes the r-th block, the first
    n mod W blocks one sample longer than the others, so every sample is on exactly one rank and the blocks in rank
    order are the dataset's order; a rank holds none when the set is smaller than the number of ranks."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed, drop_last=False)
        size, longer = divmod(len(dataset), num_replicas)
        self.first = rank * size + min(rank, longer)
        self.num_samples = size + (rank < longer)
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.first, self.first + self.num_samples))


class _SeededLoader(DataLoader):
    """A DataLoader whose pass begins at its first batch, with the workers' base seed drawn from its own generator
    seeded by (seed, epoch, rank)."""

    def __init__(self, dataset: Dataset, **options):
        super().__init__(dataset, generator=torch.Generator(), **options)

    def __iter__(self) -> Iterator:
        return self._pass()

    def _begin_pass(self, resumed: bool = False) -> None:
        """Called when the pass's first batch is asked for, before the sampler is read; ``resumed``: the pass
        continues an epoch begun before the checkpoint the run resumed from."""
        if not resumed:  # the draw a stock DataLoader makes for its base seed: the global stream stays as it was
            torch.empty((), dtype=torch.int64).random_()
        sampler = self.sampler
        self.generator.manual_seed(int(np.random.SeedSequence([sampler.seed % 2**63, sampler.epoch, sampler.rank])
                                       .generate_state(1)[0]))

    def _pass(self) -> Iterator:
        self._begin_pass()
        yield from super().__iter__()


class _EvalLoader(_SeededLoader):
    """An evaluation loader. A rank whose shard is empty (an evaluation set smaller than the number of ranks) gets
    one empty batch, ``collate_fn([])``: it still runs the evaluation loop (Lightning skips the loop, hooks included,
    on a rank without batches) and so joins the other ranks' collectives at the end of the epoch."""

    def __len__(self) -> int:
        return max(super().__len__(), 1)

    def _pass(self) -> Iterator:
        if len(self.sampler) == 0:
            self._begin_pass()
            yield self.collate_fn([])
        else:
            yield from super()._pass()


class _ResumableLoader(_SeededLoader):
    """A training DataLoader Lightning checkpoints: ``state_dict`` = (epoch, batches handed out in that epoch's
    pass); after ``load_state_dict`` the next pass over that epoch skips those batches' samples. A pass over another
    epoch (the state was saved on an epoch's last batch) starts from its beginning."""

    def __init__(self, dataset: Dataset, **options):
        super().__init__(dataset, **options)
        self._epoch, self._batches_done = 0, 0
        self._resume_at: tuple[int, int] | None = None

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "batches_done": self._batches_done}

    def load_state_dict(self, state: dict) -> None:
        self._epoch, self._batches_done = int(state["epoch"]), int(state["batches_done"])
        self._resume_at = (self._epoch, self._batches_done)
        self.sampler.set_epoch(self._epoch)  # Lightning sets the epoch it continues with before the pass begins

    def _begin_pass(self, resumed: bool = False) -> None:
        epoch = self.sampler.epoch
        done = self._resume_at[1] if self._resume_at is not None and self._resume_at[0] == epoch else 0
        self._resume_at = None
        self._epoch, self._batches_done = epoch, done
        self.sampler.start = done * self.batch_size
        super()._begin_pass(resumed=done > 0)

    def _pass(self) -> Iterator:
        for batch in super()._pass():
            self._batches_done += 1
            yield batch


def sharded_loader(dataset: Dataset, trainer: L.Trainer | None, batch_size: int, shuffle: bool, seed: int,
                   num_workers: int, collate_fn: Callable, drop_last: bool = False) -> DataLoader:
    """A DataLoader whose sampler holds this rank's shard (world size 1 without a trainer); a shuffled (training)
    loader is resumable (``state_dict`` / ``load_state_dict``)."""
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler_type = _TrainSampler if shuffle else _EvalSampler
    sampler = sampler_type(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
    # Workers are not persistent: each epoch forks them anew, so per-epoch dataset state (the epoch that seeds
    # augmentations, set through ``set_epoch``) reaches them.
    options = dict(batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate_fn,
                   drop_last=drop_last, persistent_workers=False, pin_memory=False)
    return (_ResumableLoader if shuffle else _EvalLoader)(dataset, **options)


def seed_from_names(names: Sequence[str]) -> int:
    """A 32-bit seed from sample names (CRC-32 of the names joined by "|"): evaluation randomness that follows the
    samples, so a checkpoint scores the same whatever the batch order or the number of DDP processes."""
    return zlib.crc32("|".join(names).encode())
