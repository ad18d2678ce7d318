"""Golden fixture for ``lang3d.convert.pointcontrast``: the OFFICIAL PointContrast ``Res16UNet34C`` on random weights.

Official code: https://github.com/facebookresearch/PointContrast at commit 47e868281d35b26e186ca41a9b6d1906b50dbcfa
(``downstream/semseg/models``: ``res16unet.py``, ``resnet.py``, ``model.py``, ``modules/common.py``,
``modules/resnet_block.py``), and ``MinkowskiEngine/Common.py`` of https://github.com/NVIDIA/MinkowskiEngine at tag
v0.4.3 (commit b683e25a2482f49ea851dc4c629ffffdf70e0e37) for ME 0.4's HYBRID kernel offsets. Run with ME 0.5.4.

    python tests/data/pointcontrast_official/make_fixture.py --pointcontrast /path/to/PointContrast \
        --minkowski-v043 /path/to/MinkowskiEngine-0.4.3 --out tests/data/pointcontrast_official

PointContrast was written for ME 0.4; only ME 0.5.4 runs here. The script copies ``downstream/semseg/models`` to a
scratch folder and makes exactly these ME 0.4 -> 0.5 API edits there (printed when it runs): ``collections.Sequence``
-> ``collections.abc.Sequence``; ``ME.RegionType.HYPERCUBE/HYPERCROSS`` -> ``HYPER_CUBE/HYPER_CROSS``;
``ME.RegionType.HYBRID`` (3-D, every axis HYPERCUBE: the same 27 offsets) -> ``HYPER_CUBE`` with ``axis_types=None``;
``has_bias=`` -> ``bias=``; ``is_transpose=True`` for ``conv_tr``'s kernel generator; the unused table
``int_to_region_type`` emptied (ME 0.5's ``RegionType`` is not iterable); the package ``__init__`` that imports every
model family is emptied. The network, its names and its forward are the official ones.

ME 0.4 stores the BasicBlocks' 3x3x3 kernels in HYBRID offset order, ME 0.5 in HYPER_CUBE order (first axis
fastest, ``src/kernel_region.hpp``). The random weights are drawn in the **published (ME 0.4) layout**
(``random_state_dict``: NumPy's legacy ``RandomState``, whose stream never changes, so the test rebuilds them) and
re-ordered for the ME 0.5 run with the offsets that ME 0.4.3's own ``convert_region_type`` returns.

Writes: ``pointcontrast_keys.json`` (the full-size Res16UNet34C state-dict keys and shapes, in_channels 3, 32
output channels as PointContrast's pre-training, conv1_kernel_size 3), ``me043_hybrid_offsets.json`` (ME 0.4.3's
offsets for kernel 3 at tensor strides 1 and 4), ``official_outputs.npz`` (input voxels and features, output
coordinates and features of the official model in eval mode).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

SEED = 20201108
BLOCK_KERNEL = re.compile(r"block\d\.\d+\.conv[12]\.kernel")   # the HYBRID (ME 0.4) kernels of PointContrast


def random_state_dict(keys_and_shapes: list[tuple[str, list[int]]], seed: int = SEED) -> dict[str, np.ndarray]:
    """Deterministic random weights, key by key in the given order, in the published (ME 0.4) layout: kernels
    [K, C_in, C_out] ~ N(0, 2 / (K C_in)) ([C_in, C_out] for 1x1), the head's bias 0.01 N; BatchNorm gammas
    1 + 0.1 N, betas and running means 0.01 N, running variances U(0.5, 1.5), ``num_batches_tracked`` 0."""
    rng = np.random.RandomState(seed)
    out = {}
    for key, shape in keys_and_shapes:
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[key] = np.zeros(shape, dtype=np.int64)
            continue
        if leaf == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(size=shape) * np.sqrt(2.0 / fan_in)
        elif leaf == "running_var":
            value = rng.uniform(0.5, 1.5, size=shape)
        elif leaf == "weight":
            value = 1.0 + 0.1 * rng.standard_normal(size=shape)
        else:  # bias, running_mean
            value = 0.01 * rng.standard_normal(size=shape)
        out[key] = value.astype(np.float32)
    return out


def random_input(seed: int = SEED + 1) -> tuple[np.ndarray, np.ndarray]:
    """Two scenes of 700 distinct voxels in a 20^3 box: coordinates [N,4] int32 (batch, x, y, z), RGB-like
    features [N,3] float32."""
    rng = np.random.RandomState(seed)
    coords = []
    for b in range(2):
        flat = rng.choice(20 ** 3, size=700, replace=False)
        xyz = np.stack(np.unravel_index(flat, (20, 20, 20)), 1)
        coords.append(np.concatenate([np.full((700, 1), b), xyz], 1))
    coords = np.concatenate(coords).astype(np.int32)
    return coords, rng.uniform(-1, 1, size=(len(coords), 3)).astype(np.float32)


def _scratch_models(pointcontrast: Path, scratch: Path) -> None:
    """Copy downstream/semseg/models into scratch and make the ME 0.5 API edits listed in the module docstring."""
    shutil.copytree(pointcontrast / "downstream" / "semseg" / "models", scratch / "models")
    (scratch / "models" / "__init__.py").write_text("")
    edits = [("collections.Sequence", "collections.abc.Sequence"),
             ("ME.RegionType.HYPERCUBE", "ME.RegionType.HYPER_CUBE"),
             ("ME.RegionType.HYPERCROSS", "ME.RegionType.HYPER_CROSS"),
             ("ME.RegionType.HYBRID", "ME.RegionType.HYPER_CUBE"),
             ("has_bias=bias", "bias=bias"),
             ("region_type=region_type,\n      axis_types=axis_types,",
              "region_type=region_type,\n      axis_types=None,\n      is_transpose=True,"),
             ("region_type=region_type, axis_types=axis_types,", "region_type=region_type, axis_types=None,"),
             ("{m.value: m for m in ME.RegionType}", "{}")]
    path = scratch / "models" / "modules" / "common.py"
    text = path.read_text()
    for old, new in edits:
        if old not in text:
            raise SystemExit(f"expected text not found in {path}: {old!r}")
        text = text.replace(old, new)
        print(f"scratch edit in models/modules/common.py: {old!r} -> {new!r}")
    path.write_text(text)


def _me043_convert_region_type(minkowski: Path):
    """ME 0.4.3's ``convert_region_type`` and ``RegionType`` from its Common.py (pure Python functions; its import of
    the compiled backend finds ME 0.5's, which they do not use; ``collections.Sequence`` read from
    ``collections.abc``)."""
    source = (minkowski / "MinkowskiEngine" / "Common.py").read_text()
    source = source.replace("from collections import Sequence", "from collections.abc import Sequence")
    namespace: dict = {"__name__": "me043_common"}
    exec(compile(source, "MinkowskiEngine-0.4.3/MinkowskiEngine/Common.py", "exec"), namespace)
    return namespace["convert_region_type"], namespace["RegionType"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pointcontrast", required=True, type=Path)
    parser.add_argument("--minkowski-v043", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    convert_region_type, RegionType = _me043_convert_region_type(args.minkowski_v043)
    hybrid = {}
    for stride in (1, 4):
        # strides and dilation as Python lists: ME 0.4 passed 0-dim tensors there, whose products modern torch no
        # longer packs into an IntTensor; the numbers are the same
        _, offsets, _ = convert_region_type(RegionType.HYBRID, [stride] * 3, torch.IntTensor([3] * 3), [1] * 3,
                                            [1] * 3, None, [RegionType.HYPERCUBE] * 3, 3)
        hybrid[f"tensor_stride_{stride}"] = offsets.tolist()
    (args.out / "me043_hybrid_offsets.json").write_text(json.dumps({"kernel_size": 3, **hybrid}) + "\n")

    scratch = Path(tempfile.mkdtemp(prefix="pointcontrast_official_"))
    _scratch_models(args.pointcontrast, scratch)
    sys.path.insert(0, str(scratch))
    import MinkowskiEngine as ME
    from models.res16unet import Res16UNet34C

    config = types.SimpleNamespace(net=types.SimpleNamespace(conv1_kernel_size=3),
                                   optimizer=types.SimpleNamespace(bn_momentum=0.05))
    model = Res16UNet34C(3, 32, config, D=3)
    keys = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    (args.out / "pointcontrast_keys.json").write_text("[\n" + ",\n".join(json.dumps(k) for k in keys) + "\n]\n")

    # ME 0.5's HYPER_CUBE order (kernel_region.hpp: first axis fastest) of the 27 offsets
    me05 = [(x, y, z) for z in (-1, 0, 1) for y in (-1, 0, 1) for x in (-1, 0, 1)]
    index_04 = {tuple(o): i for i, o in enumerate(hybrid["tensor_stride_1"])}
    to_me05 = torch.tensor([index_04[o] for o in me05])
    published = random_state_dict(keys)
    state = {}
    for key, value in published.items():
        tensor = torch.from_numpy(value)
        state[key] = tensor[to_me05] if BLOCK_KERNEL.fullmatch(key) else tensor
    model.load_state_dict(state, strict=True)
    model.eval()

    coords, feats = random_input()
    with torch.no_grad():
        out = model(ME.SparseTensor(torch.from_numpy(feats), torch.from_numpy(coords)))
    np.savez(args.out / "official_outputs.npz", coords=coords, feats=feats, out_coords=out.C.numpy().astype(np.int32),
             out_feats=out.F.numpy())
    print(f"{len(keys)} tensors; output {tuple(out.F.shape)}, |out| mean {out.F.abs().mean():.4f} "
          f"max {out.F.abs().max():.4f}")


if __name__ == "__main__":
    main()
