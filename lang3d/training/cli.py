"""The ``lang3d`` / ``lightning`` command: one LightningCLI in subclass mode over the project's modules and data.

    lightning fit -c configs/text4point/pretrain_scannet.yaml --data.root /data/scannet
    lightning fit -c CONFIG --print_config
    lang3d convert pointbind pointbind_i2pmae.pt pointbind_i2pmae.ckpt
"""
from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from lang3d.training.resume import newest_checkpoint, resume_callbacks
from lang3d.training.user_errors import report


class DataRootError(FileNotFoundError):
    """A data root named in the config does not exist."""


class LinkedArgumentError(ValueError):
    """The model config sets an argument that the model takes from the data."""


def _box_sizes(mean_size) -> list[list[float]]:
    """[K, 3] mean box sizes (array or nested list) as nested lists of floats (what the model's hparams hold)."""
    return np.asarray(mean_size, dtype=np.float64).tolist()


def _voxel_size(hparams) -> float | None:
    return hparams.get("voxel_size")


@dataclass(frozen=True)
class DataLink:
    """The model's init argument ``target`` is the instantiated datamodule's attribute ``source`` (through
    ``compute``) whenever the chosen model has that argument and the chosen data class provides the value: has the
    attribute ``source``, or, for ``source="hparams"``, an init argument named ``target``. Otherwise the link does
    nothing (jsonargparse ignores a link whose source attribute or target argument is missing)."""

    source: str
    target: str
    compute: Callable | None = None

    def provided_by(self, data_class: type) -> bool:
        if self.source == "hparams":
            return self.target in inspect.signature(data_class).parameters
        return hasattr(data_class, self.source)


DATA_LINKS = (DataLink("class_names", "class_names", list), DataLink("oriented", "oriented", bool),
              DataLink("mean_size", "mean_size", _box_sizes), DataLink("hparams", "voxel_size", _voxel_size))
"""What a model takes from its data: the classes (Text4Point's downstream tasks), whether boxes are oriented and the
mean box sizes (detection), the voxel edge in metres (instance segmentation)."""


def _import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _import_project() -> None:
    """Import every pipeline so their LightningModules / DataModules can be named by short class name."""
    import datamodules  # noqa: F401
    import pointbind  # noqa: F401
    import sepe  # noqa: F401
    import text4point  # noqa: F401


def settings_arguments(settings: dict) -> dict:
    """The arguments of a plain-dict class setting ``{class_path, init_args}``: ``init_args`` updated by any key
    beside ``class_path`` (a command-line override such as ``--data.init_args.alignment.init_args.root X`` reaches
    a dict setting as ``root`` beside ``class_path``)."""
    extra = {k: v for k, v in settings.items() if k not in ("class_path", "init_args")}
    return {**(settings.get("init_args") or {}), **extra}


def _class_and_args(node) -> tuple[str, dict] | None:
    """(class_path, arguments) of a config node naming a class: a jsonargparse namespace with class_path /
    init_args, or a plain dict, whose arguments may also sit beside class_path (how command-line overrides land)."""
    if isinstance(node, dict) and node.get("class_path"):
        return node["class_path"], settings_arguments(node)
    if hasattr(node, "get") and node.get("class_path") and node.get("init_args") is not None:
        return node["class_path"], dict(vars(node["init_args"]))
    return None


def missing_data_roots(node, key: str = "data") -> list[str]:
    """``key: path (Class)`` for every ``root`` of a datamodule in the config node ``node`` (nested datamodules
    included) that does not exist, unless the datamodule is asked to write its built-in data there
    (``write_builtin_data: true``, done by its ``prepare_data``)."""
    found = _class_and_args(node)
    if found is None:
        return []
    class_path, args = found
    name = class_path.rpartition(".")[2]
    root, missing = args.get("root"), []
    if isinstance(root, str) and not Path(root).expanduser().exists() and not args.get("write_builtin_data"):
        missing.append(f"{key}.root: {root} ({name})")
    for child_key, child in args.items():
        missing += missing_data_roots(child, f"{key}.{child_key}")
    return missing


def linked_arguments_given(config, given) -> list[str]:
    """``model.<argument> (...)`` for every argument of ``DATA_LINKS`` that the model takes from the data (the model
    of ``config`` has it and its data class provides it) but that ``given``, the config as written (config files
    and command line, no defaults), sets: the CLI would replace it by the data's value."""
    model, data = _class_and_args(config.get("model")), _class_and_args(config.get("data"))
    if model is None or data is None:
        return []
    found = _class_and_args(given.get("model")) if given is not None else None
    written = found[1] if found else {}
    model_class, data_class = _import_class(model[0]), _import_class(data[0])
    parameters = inspect.signature(model_class).parameters
    return [f"model.{link.target} (it is {data_class.__name__}'s "
            f"{link.target if link.source == 'hparams' else link.source})"
            for link in DATA_LINKS if link.target in parameters and link.target in written
            and link.provided_by(data_class)]


class Lang3DCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        """The model's arguments that must match the data come from the instantiated datamodule (``DATA_LINKS``)."""
        for link in DATA_LINKS:
            parser.link_arguments(f"data.{link.source}", f"model.init_args.{link.target}", compute_fn=link.compute,
                                  apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        """Also keeps the config as written (``self.config_given``: config files and command line, no defaults)."""
        super().parse_arguments(parser, args)
        if isinstance(args, (dict, Namespace)):
            self.config_given = parser.parse_object(args, defaults=False)
        else:
            self.config_given = parser.parse_args(args, defaults=False)

    def instantiate_classes(self) -> None:
        """Reports a missing data root, or a model argument given that comes from the data, before any class is
        built (and so before any weights are loaded)."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        missing = missing_data_roots(config.get("data"))
        if missing:
            raise DataRootError("the data root does not exist: " + "; ".join(missing) +
                                " (pass --data.root /path/to/the/dataset)")
        written = self.config_given.get(self.subcommand) if self.subcommand else self.config_given
        given = linked_arguments_given(config, written)
        if given:
            raise LinkedArgumentError("the model takes these from the data, remove them from the model config or "
                                      "command line: " + "; ".join(given))
        super().instantiate_classes()
        # Lightning's instantiator records every link jsonargparse applied in the model's hyper-parameters, also one
        # it ignored because the chosen model lacks the argument: such a key would break reloading a checkpoint
        parameters = inspect.signature(type(self.model)).parameters
        self.model.remove_ignored_hparams([link.target for link in DATA_LINKS if link.target not in parameters])

    def before_fit(self) -> None:
        """``--ckpt_path last`` resumes from the run's newest checkpoint
        (``lang3d.training.resume.newest_checkpoint``)."""
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = str(newest_checkpoint(self.trainer) or "last")


def build_cli(args: list[str] | None = None, run: bool = True) -> Lang3DCLI:
    """The project's LightningCLI on ``args`` (None: the command line). Every run also gets the callbacks and the
    checkpoint writer that make a killed run resume exactly (``lang3d.training.resume``). ``run=False`` parses and
    builds the model, datamodule and trainer without running a subcommand (``cli.model``, ``cli.datamodule``)."""
    _import_project()
    return Lang3DCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     args=args, run=run, save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
                     trainer_defaults={"callbacks": resume_callbacks(),
                                       "plugins": [{"class_path": "lang3d.training.resume.AtomicCheckpointIO"}]})


def main(args: list[str] | None = None) -> None:
    """Runs ``build_cli(args)``; ``lang3d convert KIND IN OUT`` converts a published checkpoint (``lang3d.convert``)
    instead."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["convert"]:
        from lang3d.convert import main as convert
        return convert(argv[1:])
    build_cli(args)


def console_main() -> None:
    """The ``lang3d`` / ``lightning`` commands: ``main`` on the command line's arguments; a failure raised by the
    project's code is printed first, in a few lines (``lang3d.training.user_errors``), and exits with status 1."""
    try:
        main()
    except Exception as error:  # anything else propagates with its traceback, as from main()
        if not report(error):
            raise
        sys.exit(1)
    # Lightning leaves the DDP process group up; a gloo group still alive at interpreter exit can abort the process
    # ("terminate called without an active exception", SIGABRT) after a successful run.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    console_main()
