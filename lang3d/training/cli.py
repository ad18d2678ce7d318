"""The ``lang3d`` / ``lightning`` command: one LightningCLI in subclass mode over the project's modules and data.

    lightning fit -c configs/text4point/pretrain_scannet.yaml --data.root /data/scannet
    lightning fit -c CONFIG --print_config
    lang3d convert pointbind pointbind_i2pmae.pt pointbind_i2pmae.ckpt
"""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from lang3d.training.resume import (CheckpointOnSigterm, RandomStateCheckpoint, TrainLoaderStateOnResume,
                                    newest_checkpoint)
from lang3d.training.user_errors import report


class DataRootError(FileNotFoundError):
    """A data root named in the config does not exist."""


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


class Lang3DCLI(LightningCLI):
    def instantiate_classes(self) -> None:
        """Reports a missing data root before any class is built (and so before any weights are loaded)."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        missing = missing_data_roots(config.get("data"))
        if missing:
            raise DataRootError("the data root does not exist: " + "; ".join(missing) +
                                " (pass --data.root /path/to/the/dataset)")
        super().instantiate_classes()

    def before_fit(self) -> None:
        """``--ckpt_path last`` resumes from the run's newest checkpoint (``lang3d.training.resume.newest_checkpoint``)."""
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = str(newest_checkpoint(self.trainer) or "last")


def main(args: list[str] | None = None) -> None:
    """Every run also gets the callbacks and the checkpoint writer that make a killed run resume exactly
    (``lang3d.training.resume``).
    ``lang3d convert KIND IN OUT`` converts a published checkpoint (``lang3d.convert``) instead."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["convert"]:
        from lang3d.convert import main as convert
        return convert(argv[1:])
    _import_project()
    Lang3DCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args,
              save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
              trainer_defaults={"callbacks": [RandomStateCheckpoint(), TrainLoaderStateOnResume(),
                                              CheckpointOnSigterm()],
                                "plugins": [{"class_path": "lang3d.training.resume.AtomicCheckpointIO"}]})


def console_main() -> None:
    """The ``lang3d`` / ``lightning`` commands: ``main`` on the command line's arguments; a failure raised by the
    project's code is printed first, in a few lines (``lang3d.training.user_errors``), and exits with status 1."""
    try:
        main()
    except Exception as error:  # anything else propagates with its traceback, as from main()
        if not report(error):
            raise
        sys.exit(1)


if __name__ == "__main__":
    console_main()
