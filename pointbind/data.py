"""Point-Bind's data: alignment triplets for training and validation, plus a zero-shot set validated alongside."""
from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader


class NestedDataModuleError(RuntimeError):
    """A datamodule built inside another one carries hyperparameters that are not its own."""


def _check_own_hparams(part: L.LightningDataModule, name: str) -> None:
    """LightningCLI's stock instantiator hands the top-level config's hyperparameters to every datamodule it
    builds, nested ones included; those would then read the wrapper's settings as their own."""
    given = getattr(part, "hparams", {}).get("_class_path")
    if given is not None and given.rsplit(".", 1)[-1] != type(part).__name__:
        raise NestedDataModuleError(
            f"PointBindDataModule {name}: the {type(part).__name__} was given the hyperparameters of {given} by "
            f"LightningCLI; run through lang3d.cli (its instantiator gives nested datamodules their own arguments)")


class PointBindDataModule(L.LightningDataModule):
    """Wraps two datamodules so that ``fit`` validates both alignment and zero-shot classification.

    Args:
        alignment: serves (points, caption[, image]) batches, e.g. ``Cap3DDataModule``: its train split trains,
            its val split is validation dataloader 0 (loss and item-level retrieval), its test split is the
            test set when there is no ``zeroshot``.
        zeroshot: serves labelled shapes (``points``, ``label``), e.g. ``ModelNet40DataModule``: its test split
            is validation dataloader 1 (zero-shot accuracy, class-level retrieval) and the test set.
    """

    def __init__(self, alignment: L.LightningDataModule, zeroshot: L.LightningDataModule | None = None):
        super().__init__()
        for name, part in (("alignment", alignment), ("zeroshot", zeroshot)):
            if part is not None:
                _check_own_hparams(part, name)
        self.alignment = alignment
        self.zeroshot = zeroshot

    def _parts(self) -> list[L.LightningDataModule]:
        parts = [dm for dm in (self.alignment, self.zeroshot) if dm is not None]
        for dm in parts:
            dm.trainer = self.trainer  # the parts shard their loaders over the trainer's ranks
        return parts

    @property
    def prompt_names(self) -> list[str] | None:
        """Class names of the zero-shot set for prompts (None without one, or when it names none)."""
        return getattr(self.zeroshot, "prompt_names", None) or None

    def prepare_data(self) -> None:
        for dm in self._parts():
            dm.prepare_data()

    def setup(self, stage: str) -> None:
        self._parts()
        self.alignment.setup(stage)
        if self.zeroshot is not None:
            self.zeroshot.setup("test")  # only its test split is used

    def train_dataloader(self) -> DataLoader:
        self._parts()
        return self.alignment.train_dataloader()

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        self._parts()
        if self.zeroshot is None:
            return self.alignment.val_dataloader()
        return [self.alignment.val_dataloader(), self.zeroshot.test_dataloader()]

    def test_dataloader(self) -> DataLoader:
        self._parts()
        return (self.zeroshot or self.alignment).test_dataloader()
