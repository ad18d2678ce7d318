"""Published weights into a Point-Bind model: a released Point-Bind checkpoint (3D encoder, projection, logit
scale), or a pre-trained 3D encoder as the initialisation of alignment training (the paper fine-tunes a
pre-trained I2P-MAE; its Table 3). Files are read safely and converted by ``lang3d.convert``; loading is strict,
with ``lang3d.training.checkpoint``'s report."""
from __future__ import annotations

from torch import nn

from lang3d.convert import Conversion, read_checkpoint
from lang3d.training.checkpoint import CheckpointMismatchError, LoadReport, load_tensors

RELEASE_KINDS = ("pointbind",)
ENCODER_KINDS = ("i2pmae-pretrain", "pointbert-pretrain", "pointbind")


def _check_encoder(conversion: Conversion, encoder_name: str) -> None:
    held = conversion.meta.get("encoder")
    if held != encoder_name:
        raise CheckpointMismatchError(f"{conversion.source} holds a '{held}' 3D encoder, the model's encoder is "
                                      f"'{encoder_name}' (set model.encoder: {held})")


def load_release(parts: dict[str, nn.Module], encoder_name: str, source: str) -> tuple[Conversion, LoadReport]:
    """Load a released Point-Bind checkpoint (path or tag; official file or ``lang3d convert`` output) into
    ``parts`` = {"encoder", "head", "logit_scale"} with ``strict`` loading: every tensor of the three is in the
    file and every kept tensor of the file is used."""
    conversion = read_checkpoint(source, RELEASE_KINDS)
    _check_encoder(conversion, encoder_name)
    embed = conversion.state["head.out.weight"].shape[0]
    expected = parts["head"].out.weight.shape[0]
    if embed != expected:
        raise CheckpointMismatchError(
            f"{conversion.source}: tensor 'head.out.weight' projects into a {embed}-d space, the model's joint space "
            f"(model.clip_model) is {expected}-d. The released Point-Bind models live in ImageBind-Huge's space: "
            "use configs/pointbind_imagebind.yaml (ImageBind's towers, imagebind_huge, 1024-d)")
    report = load_tensors(nn.ModuleDict(parts), conversion.state, conversion.source,
                          initialised=conversion.initialised)
    return conversion, report


def load_encoder(encoder: nn.Module, encoder_name: str, source: str) -> tuple[Conversion, LoadReport]:
    """Initialise ``encoder`` from a pre-trained 3D encoder (I2P-MAE or Point-BERT pre-training checkpoint, or the
    encoder of a Point-Bind release; path, tag or converted file), strictly: every encoder tensor comes from the
    file except those the published model does not have (``Conversion.initialised``)."""
    conversion = read_checkpoint(source, ENCODER_KINDS)
    _check_encoder(conversion, encoder_name)
    state = {k: v for k, v in conversion.state.items() if k.startswith("encoder.")}
    report = load_tensors(nn.ModuleDict({"encoder": encoder}), state, conversion.source,
                          initialised=[k for k in conversion.initialised if k.startswith("encoder.")])
    return conversion, report
