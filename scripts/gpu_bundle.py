"""Write the folder the lent GPU machine's check installs from (``make gpu-bundle``): that machine has no network,
so everything it lacks travels with the call.

    python scripts/gpu_bundle.py [--out gpu-bundle] [--max-mib 40]

The folder holds
  wheels/                 the MinkowskiEngine CUDA wheel (cp312, torch 2.11.0+cu130, sm_80 + sm_90, built by
                          scripts/build_minkowski.py with the PyPI CUDA 13.0 toolchain; tens of minutes on 2 cores
                          the first time, then cached) and the wheels of requirements-gpu-bundle.txt
  native-libs.tar.xz      the shared libraries the extension links that the machine may lack (OpenBLAS and its
                          libgfortran / libquadmath, from Debian's packages), as lib/<soname>
  MANIFEST.txt            bytes and sha256 of every file
Downloads are cached in ``$LANG3D_CACHE/gpu-bundle`` (default ~/.cache/lang3d), so a second bundle takes seconds.
The folder is written beside its final place and renamed, so a half-written bundle never replaces a whole one. It
also prints what a device call carries in all (the working tree that travels plus the bundle), which must stay
under the call's 64 MiB.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import build_minkowski  # noqa: E402

TORCH_VERSION = "2.11.0"              # the GPU machine's torch: the extension's C++ ABI is tied to it
CUDA_ARCHS = "8.0;9.0"                # A100; H100 / H200
WHEEL_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64", "manylinux1_x86_64"]
# Debian package -> the sonames taken from it (the extension needs libopenblas.so.0, which needs the other two).
NATIVE_LIBRARIES = {
    "libopenblas0-pthread": ["libopenblas.so.0"],
    "libgfortran5": ["libgfortran.so.5"],
    "libquadmath0": ["libquadmath.so.0"],
}
CALL_LIMIT_MIB = 64


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def minkowski_cuda_wheel() -> Path:
    """The cached CUDA wheel for the GPU machine (built when missing)."""
    import torch

    if torch.__version__.split("+")[0] != TORCH_VERSION:
        sys.exit(f"gpu-bundle: this environment has torch {torch.__version__}; the GPU machine's extension must be "
                 f"built against torch {TORCH_VERSION} (make install)")
    env = dict(os.environ, LANG3D_CUDA="pip", TORCH_CUDA_ARCH_LIST=CUDA_ARCHS)
    run([sys.executable, str(REPO / "scripts" / "build_minkowski.py"), "--cuda", "--no-install"], env=env)
    os.environ["TORCH_CUDA_ARCH_LIST"] = CUDA_ARCHS
    return sorted(build_minkowski.cache_dir(True).glob("*.whl"))[-1]


def python_wheels(cache: Path) -> list[Path]:
    """The wheels of requirements-gpu-bundle.txt for CPython 3.12 on x86-64 Linux, downloaded into ``cache``."""
    requirements = REPO / "requirements-gpu-bundle.txt"
    cache.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(cache), "-r", str(requirements)])
    wheels = []
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, version = line.split("==")
        stem = name.replace("-", "_").lower()
        found = [w for w in cache.glob("*.whl")
                 if w.name.lower().startswith(f"{stem}-{version}-".lower())]
        if len(found) != 1:
            sys.exit(f"gpu-bundle: expected one wheel of {name}=={version} in {cache}, found {found}")
        wheels.append(found[0])
    return wheels


def native_libraries(cache: Path, dest: Path) -> None:
    """``dest`` (.tar.xz) with lib/<soname> for every library of ``NATIVE_LIBRARIES``, from Debian's packages."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [pkg for pkg in NATIVE_LIBRARIES if not list(cache.glob(f"{pkg}_*.deb"))]
    if missing:
        run(["apt-get", "download", *missing], cwd=cache)
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(dest, "w:xz") as tar:
        for pkg, sonames in NATIVE_LIBRARIES.items():
            deb = sorted(cache.glob(f"{pkg}_*.deb"))[-1]
            root = Path(tmp) / pkg
            run(["dpkg-deb", "-x", str(deb), str(root)])
            for soname in sonames:
                found = [p for p in root.rglob(soname)]
                if len(found) != 1:
                    sys.exit(f"gpu-bundle: {deb.name} has {len(found)} files named {soname}")
                tar.add(found[0].resolve(), arcname=f"lib/{soname}")


def travelling_tree_bytes() -> int:
    """Bytes of what a device call sends besides carried folders: tracked files and untracked, not ignored ones."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.split(b"\0")
    paths = [REPO / n.decode() for n in names if n]
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def write_manifest(folder: Path) -> None:
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{path.relative_to(folder)}  {path.stat().st_size}  sha256:{digest}")
    (folder / "MANIFEST.txt").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "gpu-bundle")
    parser.add_argument("--max-mib", type=float, default=40.0)
    args = parser.parse_args()
    cache = build_minkowski.cache_root() / "gpu-bundle"
    out = args.out.resolve()
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    (partial / "wheels").mkdir(parents=True)
    for wheel in [minkowski_cuda_wheel(), *python_wheels(cache / "wheels")]:
        shutil.copy2(wheel, partial / "wheels" / wheel.name)
    native_libraries(cache / "debs", partial / "native-libs.tar.xz")
    write_manifest(partial)
    size = folder_bytes(partial)
    if size > args.max_mib * 2**20:
        sys.exit(f"gpu-bundle: {mib(size)} is over the {args.max_mib:g} MiB allowed:\n"
                 + (partial / "MANIFEST.txt").read_text())
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    tree = travelling_tree_bytes()
    print((out / "MANIFEST.txt").read_text(), end="")
    print(f"gpu-bundle: {out} is {mib(size)} (at most {args.max_mib:g} MiB); with the working tree that travels "
          f"({mib(tree)}) a device call carries {mib(size + tree)} of its {CALL_LIMIT_MIB} MiB")
    if size + tree > CALL_LIMIT_MIB * 2**20:
        sys.exit(f"gpu-bundle: a device call would carry more than {CALL_LIMIT_MIB} MiB")


if __name__ == "__main__":
    main()
