"""Point-Bind's data: alignment triplets for training and validation, plus a zero-shot set validated alongside."""
from __future__ import annotations

import importlib
import inspect
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from lang3d.training.cli import settings_arguments

DataModuleSettings = dict[str, Any]  # {"class_path": "package.Class", "init_args": {...}}


class DataSettingsError(ValueError):
    """A part's settings name no LightningDataModule, or arguments that it does not take."""


def _check_settings(name: str, settings: DataModuleSettings) -> type[L.LightningDataModule]:
    """The LightningDataModule class that ``settings`` name, after checking that its arguments bind to it."""
    if not isinstance(settings, dict) or "class_path" not in settings:
        raise DataSettingsError(f"data.{name} must be {{class_path: package.Class, init_args: {{...}}}}, "
                                f"got {settings!r}")
    module, _, cls_name = str(settings["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError, ValueError) as e:
        raise DataSettingsError(f"data.{name}.class_path: cannot import {settings['class_path']!r} ({e})") from e
    if not (isinstance(cls, type) and issubclass(cls, L.LightningDataModule)):
        raise DataSettingsError(f"data.{name}.class_path: {settings['class_path']} is not a LightningDataModule")
    init_args = settings_arguments(settings)
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(init_args) - set(accepted))
    if unknown:
        raise DataSettingsError(f"data.{name}.init_args: {cls_name} takes no argument {', '.join(unknown)} "
                                f"(it takes: {', '.join(accepted)})")
    try:
        inspect.signature(cls).bind(**init_args)
    except TypeError as e:
        raise DataSettingsError(f"data.{name}.init_args for {cls_name}: {e}") from e
    return cls


class PointBindDataModule(L.LightningDataModule):
    """Serves two datasets so that ``fit`` validates both alignment and zero-shot classification.

    The parts are given as settings, ``{class_path, init_args}`` of a LightningDataModule (checked here, built on
    first use), so the command line builds one datamodule only and each part keeps its own arguments
    (``--data.init_args.alignment.init_args.root /data/cap3d``). From Python, built datamodules also work.

    Args:
        alignment: serves (points, caption[, image]) batches, e.g. ``Cap3DDataModule``: its train split trains,
            its val split is validation dataloader 0 (loss and item-level retrieval), its test split is the
            test set when there is no ``zeroshot``.
        zeroshot: serves labelled shapes (``points``, ``label``), e.g. ``ModelNet40DataModule``: its test split
            is validation dataloader 1 (zero-shot accuracy, class-level retrieval) and the test set.
    """

    def __init__(self, alignment: DataModuleSettings, zeroshot: DataModuleSettings | None = None):
        super().__init__()
        self._settings = {"alignment": alignment, "zeroshot": zeroshot}
        self._built: dict[str, L.LightningDataModule | None] = {}
        for name, part in self._settings.items():
            if isinstance(part, L.LightningDataModule) or part is None:
                self._built[name] = part
            else:
                _check_settings(name, part)
        self.save_hyperparameters({k: v for k, v in self._settings.items()
                                   if not isinstance(v, L.LightningDataModule)})

    def _part(self, name: str) -> L.LightningDataModule | None:
        if name not in self._built:
            settings = self._settings[name]
            cls = _check_settings(name, settings)
            self._built[name] = cls(**settings_arguments(settings))
        part = self._built[name]
        if part is not None:
            part.trainer = self.trainer  # the parts shard their loaders over the trainer's ranks
        return part

    @property
    def alignment(self) -> L.LightningDataModule:
        return self._part("alignment")

    @property
    def zeroshot(self) -> L.LightningDataModule | None:
        return self._part("zeroshot")

    @property
    def prompt_names(self) -> list[str] | None:
        """Class names of the zero-shot set for prompts (None without one, or when it names none)."""
        return getattr(self.zeroshot, "prompt_names", None) or None

    def prepare_data(self) -> None:
        for dm in (self.alignment, self.zeroshot):
            if dm is not None:
                dm.prepare_data()

    def setup(self, stage: str) -> None:
        self.alignment.setup(stage)
        if self.zeroshot is not None:
            self.zeroshot.setup("test")  # only its test split is used

    def train_dataloader(self) -> DataLoader:
        return self.alignment.train_dataloader()

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if self.zeroshot is None:
            return self.alignment.val_dataloader()
        return [self.alignment.val_dataloader(), self.zeroshot.test_dataloader()]

    def test_dataloader(self) -> DataLoader:
        return (self.zeroshot or self.alignment).test_dataloader()


class AudioTo3DDataModule(L.LightningDataModule):
    """Audio -> 3D retrieval (test): a labelled shape gallery and sound queries whose classes map onto its classes.

    Args:
        gallery: settings of a datamodule of labelled shapes, e.g. ``ModelNet40DataModule`` (its test split; its
            ``class_names`` after ``setup``).
        queries: settings of ``ESC50DataModule`` (its test folds); ``labels`` is set here from ``class_map``.
        class_map: {sound category: gallery class name}, e.g. {car_horn: car}: the query classes, each relevant to
            the gallery shapes of its class (configs/pointbind_esc50.yaml holds ESC-50 -> ModelNet40). An unknown
            name on either side is an error naming it.

    ``test_dataloader`` (and ``val_dataloader``): [gallery, queries]. ``PointBindAlignment`` scores the queries'
    retrieval of their class's shapes (R@k, mAP) and, from the gallery alone, zero-shot classification.
    """

    def __init__(self, gallery: DataModuleSettings, queries: DataModuleSettings, class_map: dict[str, str]):
        super().__init__()
        if not class_map:
            raise DataSettingsError("data.class_map is empty: map at least one sound category to a gallery class")
        _check_settings("gallery", gallery)
        _check_settings("queries", queries)
        self.save_hyperparameters()
        self._gallery: L.LightningDataModule | None = None
        self._queries: L.LightningDataModule | None = None

    @property
    def gallery(self) -> L.LightningDataModule:
        if self._gallery is None:
            settings = self.hparams.gallery
            self._gallery = _check_settings("gallery", settings)(**settings_arguments(settings))
        self._gallery.trainer = self.trainer
        return self._gallery

    @property
    def queries(self) -> L.LightningDataModule:
        """The sound datamodule, its ``labels`` the gallery's indices of ``class_map``'s classes (after the
        gallery's ``setup``)."""
        if self._queries is None:
            names = list(getattr(self.gallery, "class_names", None) or [])
            unknown = sorted({c for c in self.hparams.class_map.values() if c not in names})
            if unknown:
                raise DataSettingsError(f"data.class_map maps onto {unknown}, not classes of the gallery (it has: "
                                        f"{', '.join(names) or 'none; set it up first'})")
            labels = {sound: names.index(shape) for sound, shape in self.hparams.class_map.items()}
            settings = self.hparams.queries
            self._queries = _check_settings("queries", settings)(**{**settings_arguments(settings), "labels": labels})
        self._queries.trainer = self.trainer
        return self._queries

    @property
    def prompt_names(self) -> list[str] | None:
        return getattr(self.gallery, "prompt_names", None) or None

    def prepare_data(self) -> None:
        self.gallery.prepare_data()

    def setup(self, stage: str) -> None:
        self.gallery.setup("test")
        self.queries.setup("test")

    def test_dataloader(self) -> list[DataLoader]:
        return [self.gallery.test_dataloader(), self.queries.test_dataloader()]

    def val_dataloader(self) -> list[DataLoader]:
        return self.test_dataloader()
