"""The ``lang3d`` / ``lightning`` command: one LightningCLI in subclass mode over the project's modules and data.

    lightning fit -c configs/text4point/pretrain_scannet.yaml --data.root /data/scannet
    lightning fit -c CONFIG --print_config
"""
from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI


def _import_project() -> None:
    """Import every pipeline so their LightningModules / DataModules can be named by short class name."""
    import datamodules  # noqa: F401
    import sepe  # noqa: F401
    import text4point  # noqa: F401


def main(args: list[str] | None = None) -> None:
    _import_project()
    LightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                        subclass_mode_data=True, args=args, save_config_kwargs={"overwrite": True},
                        auto_configure_optimizers=False)


if __name__ == "__main__":
    main()
