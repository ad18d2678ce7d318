"""Build MinkowskiEngine 0.5.4 from its sdist for the torch in this environment, or reuse a cached wheel.

The 0.5.4 sdist (the last release) needs source fixes on this stack, applied as text edits of the unpacked
sdist that stop the build when the expected text is not there:
  * Python >= 3.10: ``from collections import Sequence`` -> ``collections.abc`` (five files);
  * setup.py runs ``pip uninstall MinkowskiEngine`` before building: dropped, so building a wheel (``--no-install``
    included) never removes the environment's installed one;
  * CUDA >= 12: missing thrust includes; CUDA > 12.2: NVTX3 header clashes (``-DNVTX_DISABLE`` in setup.py's
    own nvcc / cxx flags: flags from the environment never reach torch's extension builder);
  * CUDA 13 / CCCL 3: ``thrust::unary_function`` is gone; ``cudaMemPrefetchAsync`` takes a ``cudaMemLocation``
    and flags; libstdc++'s ``shared_ptr(unique_ptr&&)`` calls ``__to_address`` unqualified, which argument-
    dependent lookup makes ambiguous with ``cuda::std::__to_address`` for the GPU hash map.

Which build: CPU-only, unless a CUDA GPU is visible and a CUDA toolkit is there (``nvcc`` on PATH, ``CUDA_HOME``,
or ``LANG3D_CUDA=pip``), or a CUDA build is asked for (``--cuda`` / ``LANG3D_ME_CUDA=1``: compiling needs no GPU).
``LANG3D_ME_CPU=1`` forces CPU. ``LANG3D_CUDA=pip`` assembles the toolkit from PyPI's nvidia-* wheels at the
versions torch 2.11.0 was built with (``<cache>/cuda-13.0``). Architectures: ``TORCH_CUDA_ARCH_LIST``, else the
visible GPUs', else 8.0 and 9.0 (A100, H100/H200).
The wheel is cached in ``$LANG3D_CACHE`` (default ``~/.cache/lang3d``) keyed by the ME version, Python, the torch
version and CPU or CUDA version + architectures, so a second install only copies it. Run with the environment's
own interpreter.

    python scripts/build_minkowski.py                       # make install: reuse or build, then pip install
    python scripts/build_minkowski.py --cuda --no-install   # build (or reuse) the CUDA wheel; print its path
    python scripts/build_minkowski.py --cuda --no-install --build-dir DIR   # keep the build tree in DIR
    LANG3D_ME_WHEEL=path/to/MinkowskiEngine-*.whl python scripts/build_minkowski.py   # install a given wheel

An installed CPU-only MinkowskiEngine is replaced when a CUDA build is wanted.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

ME_VERSION = "0.5.4"
ME_SDIST_SHA256 = "b1879c00d0b0b1d30ba622cce239886a7e3c78ee9da1064cdfe2f64c2ab15f94"   # MinkowskiEngine-0.5.4.tar.gz

COLLECTIONS_FIX_FILES = [
    "MinkowskiEngine/MinkowskiCommon.py",
    "MinkowskiEngine/MinkowskiCoordinateManager.py",
    "MinkowskiEngine/MinkowskiKernelGenerator.py",
    "MinkowskiEngine/MinkowskiTensorField.py",
    "MinkowskiEngine/utils/quantization.py",
]
PYPI_CUDA_VERSION = "13.0"
# The CUDA toolkit pieces torch 2.11.0+cu130 was built with (the pins of its cuda-toolkit==13.0.2 dependency).
PYPI_CUDA_PACKAGES = {
    "nvidia-cuda-nvcc": "13.0.88",
    "nvidia-cuda-crt": "13.0.88",
    "nvidia-nvvm": "13.0.88",
    "nvidia-cuda-cccl": "13.0.85",
    "nvidia-cuda-runtime": "13.0.96",
    "nvidia-cusparse": "12.6.3.3",
    "nvidia-cublas": "13.1.0.3",
    "nvidia-curand": "10.4.0.35",     # curand.h (MinkowskiEngine's gpu.cuh)
    "nvidia-cusolver": "12.0.4.66",   # cusolverDn.h (torch's ATen/cuda headers)
    "nvidia-nvtx": "13.0.85",         # nvtx3/nvToolsExt.h (MinkowskiEngine's copy of cudf's NVTX wrapper)
}
DEFAULT_CUDA_ARCHS = "8.0;9.0"
THRUST_FIXES = {
    "src/3rdparty/concurrent_unordered_map.cuh": ["thrust/execution_policy.h"],
    "src/convolution_kernel.cuh": ["thrust/execution_policy.h"],
    "src/coordinate_map_gpu.cu": ["thrust/remove.h", "thrust/unique.h"],
    "src/spmm.cu": ["thrust/execution_policy.h", "thrust/reduce.h", "thrust/sort.h"],
}


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def cache_root() -> Path:
    return Path(os.environ.get("LANG3D_CACHE", Path.home() / ".cache" / "lang3d"))


def system_cuda_home() -> Path | None:
    """The system CUDA toolkit: ``$CUDA_HOME``, else the one holding ``nvcc`` on PATH, else /usr/local/cuda."""
    if os.environ.get("CUDA_HOME"):
        return Path(os.environ["CUDA_HOME"])
    nvcc = shutil.which("nvcc")
    if nvcc:
        return Path(nvcc).resolve().parent.parent
    default = Path("/usr/local/cuda")
    return default if (default / "bin" / "nvcc").exists() else None


def want_cuda(explicit: bool = False) -> bool:
    """CUDA build when asked for (``explicit`` / LANG3D_ME_CUDA=1, no GPU needed), else only where a CUDA GPU is
    usable and a toolkit is there (system or LANG3D_CUDA=pip); LANG3D_ME_CPU=1 forces CPU."""
    import torch

    if os.environ.get("LANG3D_ME_CPU") == "1":
        return False
    if explicit or os.environ.get("LANG3D_ME_CUDA") == "1":
        if torch.version.cuda is None:
            sys.exit(f"build_minkowski: a CUDA build was asked for, but torch {torch.__version__} has no CUDA")
        return True
    toolkit = os.environ.get("LANG3D_CUDA") == "pip" or system_cuda_home() is not None
    return torch.cuda.is_available() and torch.version.cuda is not None and toolkit


def cuda_archs() -> str:
    """``TORCH_CUDA_ARCH_LIST``, else the visible GPUs' compute capabilities, else 8.0;9.0."""
    import torch

    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in caps)
    return DEFAULT_CUDA_ARCHS


def cache_dir(cuda: bool) -> Path:
    import torch

    if cuda:
        archs = "-".join("sm" + a.replace(".", "") for a in re.split(r"[;\s]+", cuda_archs().strip()) if a)
        flavour = f"cuda{torch.version.cuda}-{archs}"
    else:
        flavour = "cpu"
    torch_version = torch.__version__.split("+")[0]
    return cache_root() / "wheels" / (f"MinkowskiEngine-{ME_VERSION}-py{sys.version_info.major}{sys.version_info.minor}"
                                      f"-torch{torch_version}-{flavour}")


def pypi_cuda_home() -> Path:
    """A CUDA_HOME assembled from PyPI's nvidia-* wheels (``PYPI_CUDA_PACKAGES``), made once in
    ``<cache>/cuda-13.0``: ``pkgs/`` holds the wheels' files, ``home/`` has ``bin``, ``include``, ``nvvm``
    pointing into them and ``lib64/`` with the libraries under the unversioned names the linker asks for."""
    import torch

    if torch.version.cuda != PYPI_CUDA_VERSION:
        sys.exit(f"build_minkowski: LANG3D_CUDA=pip provides CUDA {PYPI_CUDA_VERSION}, but torch {torch.__version__} "
                 f"was built with CUDA {torch.version.cuda}; install a matching CUDA toolkit instead")
    root = cache_root() / f"cuda-{PYPI_CUDA_VERSION}"
    home = root / "home"
    requirements = [f"{name}=={version}" for name, version in PYPI_CUDA_PACKAGES.items()]
    stamp = home / "lang3d-packages.txt"
    if stamp.exists() and stamp.read_text().split() == requirements:
        return home
    pkgs = root / "pkgs"
    for stale in (home, pkgs):                   # an interrupted download or another package list
        if stale.exists():
            shutil.rmtree(stale)
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--target", str(pkgs), *requirements])
    prefix = pkgs / "nvidia" / "cu13"
    for needed in ["bin/nvcc", "include/cuda_runtime.h", "include/cccl/thrust/version.h", "nvvm/bin/cicc",
                   "include/cusparse.h", "include/cublas_v2.h", "include/curand.h", "include/cusolverDn.h",
                   "include/nvtx3/nvToolsExt.h"]:
        if not (prefix / needed).exists():
            sys.exit(f"build_minkowski: the nvidia-* wheels in {pkgs} lack {needed}")
    partial = root / "home.partial"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    for name in ["bin", "include", "nvvm"]:
        (partial / name).symlink_to(prefix / name)
    lib64 = partial / "lib64"
    lib64.mkdir()
    for lib in sorted((prefix / "lib").iterdir()):
        (lib64 / lib.name).symlink_to(lib)
        unversioned = re.sub(r"\.so\.\d+$", ".so", lib.name)   # libcudart.so.13 -> libcudart.so
        if unversioned != lib.name and not (lib64 / unversioned).exists():
            (lib64 / unversioned).symlink_to(lib)
    (partial / stamp.name).write_text("\n".join(requirements) + "\n")
    partial.rename(home)                         # the cache never holds a half-assembled home
    return home


def build_cuda_home() -> Path:
    """The CUDA toolkit a CUDA build compiles with: PyPI's (LANG3D_CUDA=pip) or the system's."""
    if os.environ.get("LANG3D_CUDA") == "pip":
        return pypi_cuda_home()
    home = system_cuda_home()
    if home is None:
        sys.exit("build_minkowski: a CUDA build needs a CUDA toolkit (nvcc); none found in CUDA_HOME, PATH or "
                 f"/usr/local/cuda. Set LANG3D_CUDA=pip to fetch CUDA {PYPI_CUDA_VERSION} from PyPI.")
    return home


def fetch_sdist(dest: Path) -> Path:
    """Download the sdist into ``dest`` and check it against ``ME_SDIST_SHA256``.

    ``pip download`` cannot fetch it on Python >= 3.12: pip prepares the sdist's metadata, and ME's setup.py then
    looks for BLAS through ``numpy.distutils`` (gone on 3.12) unless ``--blas`` is on its command line, which only
    a PEP 517 config setting reaches. So pip resolves it with that setting (``--dry-run --report``) and the file
    its report names is downloaded here."""
    report = dest / "pip-report.json"
    run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation", "--use-pep517",
         "-C--global-option=--blas=openblas", "--no-cache-dir", "--quiet", "--report", str(report),
         f"minkowskiengine=={ME_VERSION}"])
    url = json.loads(report.read_text())["install"][0]["download_info"]["url"]
    print(f"MinkowskiEngine: downloading {url}", flush=True)
    with urllib.request.urlopen(url, timeout=300) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != ME_SDIST_SHA256:
        sys.exit(f"build_minkowski: {url} has sha256 {digest}, expected {ME_SDIST_SHA256}")
    sdist = dest / url.rsplit("/", 1)[-1]
    sdist.write_bytes(data)
    return sdist


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


PREFETCH_HELPER = """#define CONCURRENT_UNORDERED_MAP_CUH
#include <cuda_runtime_api.h>
// lang3d build fix: CUDA 13's cudaMemPrefetchAsync takes a cudaMemLocation and flags.
inline cudaError_t lang3d_prefetch_to_device(const void *ptr, size_t bytes, int device, cudaStream_t stream) {
#if CUDART_VERSION >= 13000
  return cudaMemPrefetchAsync(ptr, bytes, cudaMemLocation{cudaMemLocationTypeDevice, device}, 0, stream);
#else
  return cudaMemPrefetchAsync(ptr, bytes, device, stream);
#endif
}
"""

# CUDA-build text edits: (file, expected text, replacement, how many times the text must occur).
CUDA_PATCHES = [
    # CUDA >= 13 keeps thrust / cub / libcu++ in include/cccl: nvcc looks there, the C++ compiler does not.
    ("setup.py", '    libraries.append("cusparse")\n',
     '    libraries.append("cusparse")\n'
     '    from torch.utils.cpp_extension import CUDA_HOME as TORCH_CUDA_HOME\n'
     '    if TORCH_CUDA_HOME and os.path.isdir(os.path.join(TORCH_CUDA_HOME, "include", "cccl")):\n'
     '        include_dirs.append(os.path.join(TORCH_CUDA_HOME, "include", "cccl"))\n', 1),
    # NVTX3 clashes (CUDA > 12.2): the flag must be in setup.py's own lists to reach nvcc and the C++ compiler.
    ("setup.py", 'NVCC_FLAGS += ["--expt-relaxed-constexpr", "--expt-extended-lambda"]',
     'NVCC_FLAGS += ["--expt-relaxed-constexpr", "--expt-extended-lambda", "-DNVTX_DISABLE"]', 1),
    ("setup.py", 'CC_FLAGS += ["-fopenmp"]', 'CC_FLAGS += ["-fopenmp", "-DNVTX_DISABLE"]', 1),
    # CCCL 3 removed thrust::unary_function; the functor needs no base class.
    ("src/coordinate_map_functors.cuh",
     "struct find_coordinate\n    : public thrust::unary_function<uint32_t,\n"
     "                                    thrust::pair<uint32_t, uint32_t>> {",
     "struct find_coordinate {", 1),
    # CUDA 13: cudaMemPrefetchAsync(ptr, size, cudaMemLocation, flags, stream).
    ("src/3rdparty/concurrent_unordered_map.cuh", "cudaMemPrefetchAsync(", "lang3d_prefetch_to_device(", 3),
    ("src/3rdparty/concurrent_unordered_map.cuh", "#define CONCURRENT_UNORDERED_MAP_CUH\n", PREFETCH_HELPER, 1),
    # torch >= 2.13's ATen/cuda/CUDAUtils.h needs a complete at::Tensor: include ATen before it.
    ("src/spmm.cu", "#include <ATen/cuda/CUDAContext.h>\n#include <ATen/cuda/CUDAUtils.h>\n",
     "#include <ATen/ATen.h>\n#include <ATen/cuda/CUDAContext.h>\n#include <ATen/cuda/CUDAUtils.h>\n", 1),
    # shared_ptr from the released pointer and its deleter instead of from the unique_ptr: libstdc++'s
    # shared_ptr(unique_ptr&&) calls __to_address unqualified, ambiguous with CCCL 3's cuda::std::__to_address.
    ("src/coordinate_map_gpu.cuh",
     "      m_map = map_type::create(\n"
     "          compute_hash_table_size(size, m_hashtable_occupancy),\n"
     "          m_unused_element, m_unused_key, m_hasher, m_equal, m_map_allocator);\n",
     "      {\n"
     "        auto created = map_type::create(\n"
     "            compute_hash_table_size(size, m_hashtable_occupancy),\n"
     "            m_unused_element, m_unused_key, m_hasher, m_equal, m_map_allocator);\n"
     "        auto deleter = created.get_deleter();\n"
     "        m_map = std::shared_ptr<map_type>(created.release(), std::move(deleter));\n"
     "      }\n", 1),
]


def replace_exactly(path: Path, old: str, new: str, count: int) -> None:
    """Replace ``old`` by ``new`` in ``path``; stop the build unless ``old`` occurs exactly ``count`` times."""
    text = path.read_text()
    found = text.count(old)
    if found != count:
        sys.exit(f"build_minkowski: patch of {path} expected {count} occurrence(s) of {old!r}, found {found} "
                 f"(not the MinkowskiEngine {ME_VERSION} sdist?)")
    path.write_text(text.replace(old, new))


def patch_sources(src: Path, cuda: bool) -> None:
    replace_exactly(src / "setup.py", 'run_command("pip", "uninstall", "MinkowskiEngine", "-y")\n', "", 1)
    for rel in COLLECTIONS_FIX_FILES:
        path = src / rel
        path.write_text(fix_collections_import(path.read_text()))
    if cuda:
        for rel, headers in THRUST_FIXES.items():
            path = src / rel
            text = path.read_text()
            includes = "".join(f"#include <{h}>\n" for h in headers if f"<{h}>" not in text)
            path.write_text(includes + text)
        for rel, old, new, count in CUDA_PATCHES:
            replace_exactly(src / rel, old, new, count)


def build_in(tmp: Path, out: Path, cuda: bool) -> Path:
    """Unpack the sdist into ``tmp``, patch it, build the wheel there and copy it into the cache ``out``."""
    sdist = fetch_sdist(tmp)
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp, filter="data")
    src = next(p for p in tmp.iterdir() if p.is_dir())
    patch_sources(src, cuda)
    env = dict(os.environ)
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 2))
    args = [sys.executable, "setup.py", "bdist_wheel", "--blas=openblas"]
    if cuda:
        home = build_cuda_home()
        env["CUDA_HOME"] = str(home)
        env["PATH"] = f"{home / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["TORCH_CUDA_ARCH_LIST"] = cuda_archs()
        print(f"MinkowskiEngine: CUDA build with CUDA_HOME={home}, TORCH_CUDA_ARCH_LIST={env['TORCH_CUDA_ARCH_LIST']}",
              flush=True)
        args += ["--force_cuda"]
    else:
        env["CUDA_HOME"] = ""  # keep torch's extension builder from picking nvcc up
        args += ["--cpu_only"]
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"   # the environment's own tools
    run(args, cwd=src, env=env)
    wheel = next((src / "dist").glob("*.whl"))
    out.mkdir(parents=True, exist_ok=True)
    partial = out / (wheel.name + ".partial")
    shutil.copy2(wheel, partial)
    partial.rename(out / wheel.name)  # the cache never holds a half-written wheel
    return out / wheel.name


def build_wheel(out: Path, cuda: bool, build_dir: Path | None = None) -> Path:
    """Build into the cache ``out``, in a temporary folder or in ``build_dir`` (kept, e.g. to rerun ninja)."""
    if build_dir is not None:
        if build_dir.exists():
            shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True)
        return build_in(build_dir, out, cuda)
    with tempfile.TemporaryDirectory(prefix="me-build-") as tmp:
        return build_in(Path(tmp), out, cuda)


def installed_cuda() -> bool | None:
    """Whether the installed MinkowskiEngine was built with CUDA; None when none is installed."""
    try:
        import MinkowskiEngine as ME
    except ImportError:
        return None
    return bool(ME.is_cuda_available())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuda", action="store_true", help="CUDA build even without a visible GPU")
    parser.add_argument("--no-install", action="store_true", help="only build (or find) the cached wheel")
    parser.add_argument("--build-dir", type=Path, help="build here and keep the tree (default: a temporary folder)")
    args = parser.parse_args()
    cuda = want_cuda(args.cuda)
    if not args.no_install:
        have = installed_cuda()
        if have is not None and (have or not cuda):  # a CUDA build also runs on the CPU
            print(f"MinkowskiEngine already installed ({'CUDA' if have else 'CPU-only'} build)")
            return
    given = os.environ.get("LANG3D_ME_WHEEL")
    out = cache_dir(cuda)
    cached = sorted(out.glob("*.whl"))
    if given:
        wheel = Path(given)
        if not wheel.is_file():
            sys.exit(f"build_minkowski: LANG3D_ME_WHEEL={given} is not a file")
        print(f"MinkowskiEngine: using the given wheel {wheel}")
    elif cached:
        wheel = cached[-1]
        print(f"MinkowskiEngine: using cached wheel {wheel}")
    else:
        print(f"MinkowskiEngine: building {ME_VERSION} ({'CUDA' if cuda else 'CPU-only'}); "
              f"{'~10 min' if not cuda else 'tens of minutes'} on 2 cores", flush=True)
        wheel = build_wheel(out, cuda, args.build_dir)
    print(f"MinkowskiEngine wheel: {wheel} ({wheel.stat().st_size / 1e6:.1f} MB)", flush=True)
    if not args.no_install:
        run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)])


if __name__ == "__main__":
    main()
