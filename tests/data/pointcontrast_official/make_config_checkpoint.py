"""A small checkpoint in PointContrast's pre-training format, to test safe loading of its pickled Hydra config.

PointContrast's ``pretrain/pointcontrast/lib/ddp_trainer.py`` (facebookresearch/PointContrast at commit
47e868281d35b26e186ca41a9b6d1906b50dbcfa) saves ``{"curr_iter", "state_dict", "optimizer", "scheduler",
"config"}`` with ``config`` the Hydra job config, an OmegaConf ``DictConfig``. This script writes the same
structure with the real objects: omegaconf 2.0.6 (the Hydra 1.0 generation PointContrast used) loading the
repository's ``pretrain/pointcontrast/config/defaults.yaml`` (the ``hydra`` and ``defaults`` entries removed, as
Hydra does for the job config), an SGD optimizer with momentum buffers and an ExponentialLR scheduler (PointContrast's
``ExpLR``), and a one-tensor state dict (``conv0p1s1.kernel`` [27, 3, 32]) to keep the file small. With
``--legacy`` the file is written in PyTorch's pre-1.6 (non-zip) format, as PointContrast's PyTorch 1.5 wrote its
released files.

    pip install --target /tmp/omegaconf20 --no-deps omegaconf==2.0.6
    PYTHONPATH=/tmp/omegaconf20 python tests/data/pointcontrast_official/make_config_checkpoint.py \
        --defaults /path/to/PointContrast/pretrain/pointcontrast/config/defaults.yaml \
        --out tests/data/pointcontrast_official/pretrain_with_config.pth
    (the same with --legacy --out tests/data/pointcontrast_official/pretrain_with_config_legacy.pth)
"""
import argparse

import torch
from omegaconf import OmegaConf


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--defaults", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--legacy", action="store_true", help="PyTorch's pre-1.6 serialisation (not a zip file)")
    args = parser.parse_args()
    config = OmegaConf.load(args.defaults)
    del config["hydra"], config["defaults"]
    kernel = torch.nn.Parameter(torch.randn(27, 3, 32, generator=torch.Generator().manual_seed(0)))
    optimizer = torch.optim.SGD([kernel], lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-4)
    kernel.sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.99)
    scheduler.step()
    torch.save({"curr_iter": 1, "state_dict": {"conv0p1s1.kernel": kernel.detach()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "config": config}, args.out,
               _use_new_zipfile_serialization=not args.legacy)
    if not args.legacy:
        print(torch.serialization.get_unsafe_globals_in_checkpoint(args.out))


if __name__ == "__main__":
    main()
