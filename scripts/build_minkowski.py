"""Build MinkowskiEngine 0.5.4 from its sdist for the torch in this environment, or reuse a cached wheel.

The 0.5.4 sdist (the last release) needs source fixes on this stack:
  * Python >= 3.10: ``from collections import Sequence`` -> ``collections.abc`` (five files);
  * CUDA >= 12: missing thrust includes; CUDA > 12.2: NVTX3 header clashes (``NVTX_DISABLE``).
The wheel is cached in ``$LANG3D_CACHE`` (default ``~/.cache/lang3d``) keyed by the ME version, the torch
version and CPU/CUDA, so a second install only copies it. Run with the environment's own interpreter.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ME_VERSION = "0.5.4"

COLLECTIONS_FIX_FILES = [
    "MinkowskiEngine/MinkowskiCommon.py",
    "MinkowskiEngine/MinkowskiCoordinateManager.py",
    "MinkowskiEngine/MinkowskiKernelGenerator.py",
    "MinkowskiEngine/MinkowskiTensorField.py",
    "MinkowskiEngine/utils/quantization.py",
]
THRUST_FIXES = {
    "src/3rdparty/concurrent_unordered_map.cuh": ["thrust/execution_policy.h"],
    "src/convolution_kernel.cuh": ["thrust/execution_policy.h"],
    "src/coordinate_map_gpu.cu": ["thrust/remove.h", "thrust/unique.h"],
    "src/spmm.cu": ["thrust/execution_policy.h", "thrust/reduce.h", "thrust/sort.h"],
}


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def want_cuda() -> bool:
    """A CUDA build only where a CUDA GPU is usable and nvcc exists; LANG3D_ME_CPU=1 forces CPU."""
    import torch

    if os.environ.get("LANG3D_ME_CPU") == "1":
        return False
    return torch.cuda.is_available() and torch.version.cuda is not None and shutil.which("nvcc") is not None


def cache_dir(cuda: bool) -> Path:
    import torch

    root = Path(os.environ.get("LANG3D_CACHE", Path.home() / ".cache" / "lang3d"))
    flavour = f"cuda{torch.version.cuda}" if cuda else "cpu"
    torch_version = torch.__version__.split("+")[0]
    return root / "wheels" / f"MinkowskiEngine-{ME_VERSION}-py{sys.version_info.major}{sys.version_info.minor}-torch{torch_version}-{flavour}"


def fetch_sdist(dest: Path) -> Path:
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
         "--no-cache-dir", "-d", str(dest), f"minkowskiengine=={ME_VERSION}"])
    found = glob.glob(str(dest / "*inkowski*ngine-*.tar.gz"))
    if not found:
        sys.exit(f"build_minkowski: no MinkowskiEngine {ME_VERSION} sdist in {dest}")
    return Path(found[0])


def fix_collections_import(text: str) -> str:
    """``from collections import Sequence, namedtuple`` -> Sequence from collections.abc, the rest unchanged."""

    def split(match: re.Match) -> str:
        names = [n.strip() for n in match.group(1).split(",")]
        lines = ["from collections.abc import Sequence"]
        rest = [n for n in names if n != "Sequence"]
        if rest:
            lines.append("from collections import " + ", ".join(rest))
        return "\n".join(lines)

    return re.sub(r"^from collections import ((?:.*\b)?Sequence\b.*)$", split, text, flags=re.M)


def patch_sources(src: Path, cuda: bool) -> None:
    for rel in COLLECTIONS_FIX_FILES:
        path = src / rel
        path.write_text(fix_collections_import(path.read_text()))
    if cuda:
        for rel, headers in THRUST_FIXES.items():
            path = src / rel
            text = path.read_text()
            includes = "".join(f"#include <{h}>\n" for h in headers if f"<{h}>" not in text)
            path.write_text(includes + text)


def build_wheel(out: Path, cuda: bool) -> Path:
    with tempfile.TemporaryDirectory(prefix="me-build-") as tmp:
        tmp = Path(tmp)
        sdist = fetch_sdist(tmp)
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        src = next(p for p in tmp.iterdir() if p.is_dir())
        patch_sources(src, cuda)
        env = dict(os.environ)
        env.setdefault("MAX_JOBS", str(os.cpu_count() or 2))
        args = [sys.executable, "setup.py", "bdist_wheel", "--blas=openblas"]
        if cuda:
            env["CXXFLAGS"] = env.get("CXXFLAGS", "") + " -DNVTX_DISABLE"
            env["NVCC_FLAGS"] = env.get("NVCC_FLAGS", "") + " -DNVTX_DISABLE"
            args += ["--force_cuda"]
        else:
            env["CUDA_HOME"] = ""  # keep torch's extension builder from picking nvcc up
            args += ["--cpu_only"]
        run(args, cwd=src, env=env)
        wheel = next((src / "dist").glob("*.whl"))
        out.mkdir(parents=True, exist_ok=True)
        partial = out / (wheel.name + ".partial")
        shutil.copy2(wheel, partial)
        partial.rename(out / wheel.name)  # the cache never holds a half-written wheel
        return out / wheel.name


def main() -> None:
    try:
        import MinkowskiEngine  # noqa: F401

        print(f"MinkowskiEngine already installed ({MinkowskiEngine.__version__})")
        return
    except ImportError:
        pass
    cuda = want_cuda()
    out = cache_dir(cuda)
    cached = sorted(out.glob("*.whl"))
    if cached:
        wheel = cached[-1]
        print(f"MinkowskiEngine: using cached wheel {wheel}")
    else:
        print(f"MinkowskiEngine: building {ME_VERSION} ({'CUDA' if cuda else 'CPU-only'}); this takes ~10 min on 2 cores")
        wheel = build_wheel(out, cuda)
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)])


if __name__ == "__main__":
    main()
