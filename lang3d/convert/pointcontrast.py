"""PointContrast and Contrastive Scene Contexts (CSC) checkpoints of ``Res16UNet34C`` (facebookresearch/PointContrast,
facebookresearch/ContrastiveSceneContexts; MinkowskiEngine 0.3/0.4) -> ``lang3d.models.backbones.Res16UNet34C``.

Files: pre-training ``{"curr_iter", "state_dict", "optimizer", "scheduler"[, "config"]}`` (PointContrast pickles
its Hydra config, an OmegaConf ``DictConfig``; CSC does not), fine-tuning ``{"iteration", "epoch", "arch",
"state_dict", "optimizer"[, "best_val", "best_val_iter"]}``. Only ``state_dict`` is used (a DataParallel
``module.`` prefix is removed). The OmegaConf objects are not unpickled: safe loading maps exactly the classes such
a config pickles (``OMEGACONF_SKIPPED``) to ``SkippedObject``, an empty object, so omegaconf is not needed; numpy
scalars (a fine-tuning's ``best_val``) are allowed as in ``lang3d.training.checkpoint.NUMPY_SCALAR_GLOBALS``.

Names (official -> project, relative to ``Res16UNet34C``): ``conv0p1s1``/``bn0`` -> ``encoder.stem.{conv,norm}``;
``conv{i}p*s2``/``bn{i}`` -> ``encoder.stages.{i-1}.down.{conv,norm}`` (i = 1..4); ``block{i}.{j}`` ->
``encoder.stages.{i-1}.blocks.{j}`` (i = 1..4) or ``decoder.stages.{i-5}.blocks.{j}`` (i = 5..8), with
``downsample.0``/``downsample.1`` -> ``downsample.conv``/``downsample.norm``; ``convtr{i}p*s2``/``bntr{i}`` ->
``decoder.stages.{i-4}.up.{conv,norm}`` (i = 4..7); ``final`` -> ``head``. Shapes correspond one to one.

Kernel layout: the BasicBlocks' 3×3×3 kernels of these files are in ME 0.4's HYBRID offset order and are permuted
to ME 0.5's HYPER_CUBE order (``me_kernel_order``); every other kernel (stem, strided and transposed k=2, 1×1)
is HYPERCUBE in both versions and kept. Kind ``pointcontrast-me05`` renames only, for files written by an ME 0.5
port of that code.
"""
from __future__ import annotations

import collections
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from lang3d.convert import (CONVERSION_KEY, PUBLISHED, CheckpointKind, Conversion, ConversionError, Published,
                            read_checkpoint, register, rename, resolve)
from lang3d.convert.me_kernel_order import convert_hybrid_kernel
from lang3d.training.checkpoint import NUMPY_SCALAR_GLOBALS, LoadReport, load_tensors, safe_load

KIND_ME04, KIND_ME05 = "pointcontrast", "pointcontrast-me05"
HYBRID_KERNEL = re.compile(r".*\.blocks\.\d+\.conv[12]\.kernel")   # project names of the ME 0.4 HYBRID kernels


class SkippedObject:
    """Stands in for a pickled object that is not read (an OmegaConf config): accepts and discards its state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


# The globals a pickled OmegaConf 2.0/2.1 DictConfig refers to (checked with omegaconf 2.0.6; see
# tests/data/pointcontrast_official/make_config_checkpoint.py): its own classes become SkippedObject, the builtins
# it names (the dict type, defaultdict for its flags, typing.Any for its type hints) are allowed as they are.
OMEGACONF_SKIPPED: tuple = (
    *((SkippedObject, name) for name in ("omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
                                         "omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata",
                                         "omegaconf.nodes.AnyNode", "omegaconf.nodes.StringNode",
                                         "omegaconf.nodes.IntegerNode", "omegaconf.nodes.FloatNode",
                                         "omegaconf.nodes.BooleanNode", "omegaconf.nodes.EnumNode")),
    dict, list, collections.defaultdict, typing.Any)

_BN = r"bn\.(weight|bias|running_mean|running_var|num_batches_tracked)"
_BLOCK = [(r"(conv[12])\.kernel", r"\1.kernel"), (rf"(norm[12])\.{_BN}", r"\1.bn.\2"),
          (r"downsample\.0\.kernel", r"downsample.conv.kernel"), (rf"downsample\.1\.{_BN}", r"downsample.norm.bn.\1")]


def res16unet_rules() -> list[tuple[str, str]]:
    """(regex over official names, replacement) pairs for every tensor of Res16UNet34C."""
    rules = [(r"conv0p1s1\.kernel", "encoder.stem.conv.kernel"), (rf"bn0\.{_BN}", r"encoder.stem.norm.bn.\1"),
             (r"final\.(kernel|bias)", r"head.\1")]
    for i in range(1, 5):
        rules += [(rf"conv{i}p\d+s2\.kernel", f"encoder.stages.{i - 1}.down.conv.kernel"),
                  (rf"bn{i}\.{_BN}", rf"encoder.stages.{i - 1}.down.norm.bn.\1")]
    for i in range(4, 8):
        rules += [(rf"convtr{i}p\d+s2\.kernel", f"decoder.stages.{i - 4}.up.conv.kernel"),
                  (rf"bntr{i}\.{_BN}", rf"decoder.stages.{i - 4}.up.norm.bn.\1")]
    for i in range(1, 9):
        stage = f"encoder.stages.{i - 1}" if i <= 4 else f"decoder.stages.{i - 5}"
        rules += [(rf"block{i}\.(\d+)\.{pattern}", rf"{stage}.blocks.\1.{_shift(replacement)}")
                  for pattern, replacement in _BLOCK]
    return rules


def _shift(replacement: str) -> str:
    """A block rule's replacement with its group numbers moved up by one (group 1 is the block index)."""
    return re.sub(r"\\(\d)", lambda m: "\\" + str(int(m.group(1)) + 1), replacement)


def _state(raw: Any) -> Mapping[str, Any] | None:
    """The Res16UNet state dict of a PointContrast / CSC file (``state_dict``, or the file itself), or None."""
    if not isinstance(raw, Mapping):
        return None
    state = raw.get("state_dict", raw)
    if isinstance(state, Mapping) and any(str(k).removeprefix("module.") == "conv0p1s1.kernel" for k in state):
        return state
    return None


def _convert(raw: Mapping[str, Any], source: str, kind: str) -> Conversion:
    state = {k.removeprefix("module."): v for k, v in _state(raw).items()}
    kept, dropped = rename(state, res16unet_rules(), source)
    if kind == KIND_ME04:
        for name in [n for n in kept if HYBRID_KERNEL.fullmatch(n)]:
            try:
                kept[name] = convert_hybrid_kernel(kept[name], kernel_size=3)
            except ValueError as err:
                raise ConversionError(f"{source}: tensor '{name}': {err}") from err
    return Conversion(kind, source, kept, dropped, meta={"module": "Res16UNet34C"})


def convert_me04(raw: Mapping[str, Any], source: str) -> Conversion:
    """A published (ME 0.3/0.4) PointContrast / CSC file -> Res16UNet34C names, block kernels re-ordered."""
    return _convert(raw, source, KIND_ME04)


def convert_me05(raw: Mapping[str, Any], source: str) -> Conversion:
    """A file of the same network saved with ME 0.5 -> Res16UNet34C names; kernels unchanged."""
    return _convert(raw, source, KIND_ME05)


ALLOWED = (*OMEGACONF_SKIPPED, *NUMPY_SCALAR_GLOBALS)
register(CheckpointKind(KIND_ME04, "PointContrast / CSC Res16UNet34C (MinkowskiEngine 0.3/0.4, the published "
                                   "files: block kernels re-ordered for ME 0.5)",
                        lambda raw: _state(raw) is not None, convert_me04, ALLOWED),
         Published("pointcontrast_hardest_contrastive", KIND_ME04, "hardest_contrastive.pth",
                   "https://www.dropbox.com/s/la9ih2w2oavpp2z/hardest_contrastive.pth?dl=0"),
         Published("pointcontrast_nce", KIND_ME04, "nce.pth",
                   "https://www.dropbox.com/s/uzr88m1lab0abbl/nce.pth?dl=0"),
         Published("csc_partition8_4096_60k", KIND_ME04, "partition8_4096_60k.pth",
                   "http://kaldir.vc.in.tum.de/3dsis/contrastive_scene_contexts/pretrain/partition8_4096_60k.pth"),
         Published("csc_partition8_4096_100k", KIND_ME04, "partition8_4096_100k.pth",
                   "http://kaldir.vc.in.tum.de/3dsis/contrastive_scene_contexts/pretrain/partition8_4096_100k.pth"))
register(CheckpointKind(KIND_ME05, "Res16UNet34C with PointContrast's names saved by MinkowskiEngine 0.5 (names "
                                   "only)", lambda raw: _state(raw) is not None, convert_me05, ALLOWED))


def load_res16unet_weights(backbone: nn.Module, source: str | Path,
                           reinit_prefixes: tuple[str, ...] = ("head.",)) -> LoadReport:
    """Load a PointContrast / CSC file (path, tag, or its ``lang3d convert`` output) into a ``Res16UNet34C``:
    strict on every tensor; a head of another shape (``reinit_prefixes``) stays as initialised."""
    conversion = read_checkpoint(source, [KIND_ME04, KIND_ME05])
    return load_tensors(backbone, conversion.state, conversion.source, strict=True, reinit_prefixes=reinit_prefixes)


def is_res16unet_file(source: str | Path) -> bool:
    """Whether ``source`` (a path or a tag) is a PointContrast / CSC file or its ``lang3d convert`` output
    (read with safe loading; a file of another layout, a Lightning checkpoint say, gives False, and so does a path
    that does not exist, left for the caller's own loader to report)."""
    if str(source) not in PUBLISHED and not Path(source).expanduser().is_file():
        return False
    raw = safe_load(resolve(source), ALLOWED)
    if isinstance(raw, Mapping) and isinstance(raw.get(CONVERSION_KEY), Mapping):
        return raw[CONVERSION_KEY].get("kind") in (KIND_ME04, KIND_ME05)
    return _state(raw) is not None
