"""The GPU check's import check (scripts/gpu_check.sh setup): every package the project imports loads from the
machine's environment plus the bundle, the project's own packages import, and (unless LANG3D_GPU_CHECK_CPU=1)
torch sees a GPU and MinkowskiEngine is a CUDA build. Prints where each package and the BLAS library came from."""
from __future__ import annotations

import importlib
import os
import sys

THIRD_PARTY = ["torch", "torchvision", "torchaudio", "lightning", "torchmetrics", "open_clip", "jsonargparse",
               "docstring_parser", "typeshed_client", "h5py", "numpy", "scipy", "plyfile", "PIL", "tqdm", "tensorboard",
               "soundfile", "MinkowskiEngine"]
PROJECT = ["lang3d.training.cli", "text4point", "pointbind", "sepe", "datamodules"]


def loaded_libraries(fragment: str) -> list[str]:
    """Paths of this process's mapped shared libraries whose name contains ``fragment``."""
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps if fragment in line.rsplit("/", 1)[-1]})


def main() -> None:
    for name in THIRD_PARTY + PROJECT:
        module = importlib.import_module(name)
        print(f"import {name:18s} {getattr(module, '__version__', ''):14s} {getattr(module, '__file__', '')}")
    import MinkowskiEngine as ME
    import torch

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), MinkowskiEngine {ME.__version__} "
          f"({'CUDA' if ME.is_cuda_available() else 'CPU-only'} build)")
    print("BLAS loaded by MinkowskiEngine:", ", ".join(loaded_libraries("libopenblas")) or "none")
    if os.environ.get("LANG3D_GPU_CHECK_CPU") == "1":
        return
    if not torch.cuda.is_available():
        sys.exit("gpu-check: torch sees no GPU")
    if not ME.is_cuda_available():
        sys.exit("gpu-check: MinkowskiEngine is not a CUDA build")
    print(f"GPU: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}, "
          f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")


if __name__ == "__main__":
    main()
