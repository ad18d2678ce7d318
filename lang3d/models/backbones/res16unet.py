"""Sparse Residual UNet ``Res16UNet34C`` (SR-UNet) on MinkowskiEngine 0.5.4.

Layer plan of PointContrast / Pri3D / SLidR and ME's ``examples/minkunet.py`` (``MinkUNet34C``):

- stem: conv (kernel ``stem_kernel_size``) in -> 32, BN, ReLU                 (stride 1)
- encoder: 4 x [conv k=2 s=2 + BN + ReLU, BasicBlocks]; planes 32, 64, 128, 256; blocks 2, 3, 4, 6
- decoder: 4 x [transposed conv k=2 s=2 + BN + ReLU, concat skip, BasicBlocks];
  planes 256, 128, 96, 96; blocks 2, 2, 2, 2 (inputs 256+128, 128+64, 96+32, 96+32)
- head: 1x1 conv 96 -> out_channels with bias.

All convolutions are 3-D and bias-free except the head. BatchNorm ``momentum`` has torch semantics
(``running = (1 - momentum) * running + momentum * batch``); MinkowskiBatchNorm passes it straight to
``torch.nn.BatchNorm1d``, as PointContrast does with its default 0.05. Under DDP the BatchNorm layers are
synchronised by ``lang3d.training.sync_batchnorm`` (converted in the LightningModules' ``setup``).

PointContrast / CSC checkpoints of this network (ME 0.4 names and kernel layout) load through
``lang3d.convert.pointcontrast.load_res16unet_weights``.
"""

from __future__ import annotations

import MinkowskiEngine as ME
from torch import Tensor, nn

D = 3  # spatial dimension of every convolution

ENCODER_PLANES = (32, 64, 128, 256)
ENCODER_BLOCKS = (2, 3, 4, 6)
DECODER_PLANES = (256, 128, 96, 96)
DECODER_BLOCKS = (2, 2, 2, 2)
STEM_PLANES = 32


class SparseInputError(ValueError):
    """A sparse tensor given to the backbone has the wrong channels, stride or row count."""


def _conv(c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> ME.MinkowskiConvolution:
    return ME.MinkowskiConvolution(c_in, c_out, kernel_size=kernel_size, stride=stride, bias=False, dimension=D)


class ConvNormAct(nn.Module):
    """Sparse (transposed) conv -> MinkowskiBatchNorm -> optional ReLU. Names: ``conv``, ``norm``."""

    def __init__(self, conv: nn.Module, channels: int, bn_momentum: float, act: bool = True):
        super().__init__()
        self.conv = conv
        self.norm = ME.MinkowskiBatchNorm(channels, momentum=bn_momentum)
        self.act = ME.MinkowskiReLU(inplace=True) if act else None

    def forward(self, x: ME.SparseTensor) -> ME.SparseTensor:
        x = self.norm(self.conv(x))
        return self.act(x) if self.act is not None else x


class BasicBlock(nn.Module):
    """conv3 -> BN -> ReLU -> conv3 -> BN, + residual (1x1 conv + BN when channels change), ReLU."""

    def __init__(self, c_in: int, planes: int, bn_momentum: float):
        super().__init__()
        self.conv1 = _conv(c_in, planes, 3)
        self.norm1 = ME.MinkowskiBatchNorm(planes, momentum=bn_momentum)
        self.conv2 = _conv(planes, planes, 3)
        self.norm2 = ME.MinkowskiBatchNorm(planes, momentum=bn_momentum)
        self.relu = ME.MinkowskiReLU(inplace=True)
        self.downsample = (
            ConvNormAct(_conv(c_in, planes, 1), planes, bn_momentum, act=False) if c_in != planes else None
        )

    def forward(self, x: ME.SparseTensor) -> ME.SparseTensor:
        residual = self.downsample(x) if self.downsample is not None else x
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        out = out + residual
        return self.relu(out)


def _blocks(c_in: int, planes: int, n: int, bn_momentum: float) -> nn.Sequential:
    return nn.Sequential(*[BasicBlock(c_in if i == 0 else planes, planes, bn_momentum) for i in range(n)])


class EncoderStage(nn.Module):
    """Downsample (conv k=2 s=2 + BN + ReLU) then BasicBlocks: stride s -> 2s."""

    def __init__(self, c_in: int, planes: int, n_blocks: int, bn_momentum: float):
        super().__init__()
        self.down = ConvNormAct(_conv(c_in, c_in, 2, stride=2), c_in, bn_momentum)
        self.blocks = _blocks(c_in, planes, n_blocks, bn_momentum)

    def forward(self, x: ME.SparseTensor) -> ME.SparseTensor:
        return self.blocks(self.down(x))


class DecoderStage(nn.Module):
    """Upsample (transposed conv k=2 s=2 + BN + ReLU), concat the skip, BasicBlocks: stride 2s -> s."""

    def __init__(self, c_in: int, c_skip: int, planes: int, n_blocks: int, bn_momentum: float):
        super().__init__()
        up = ME.MinkowskiConvolutionTranspose(c_in, planes, kernel_size=2, stride=2, bias=False, dimension=D)
        self.up = ConvNormAct(up, planes, bn_momentum)
        self.blocks = _blocks(planes + c_skip, planes, n_blocks, bn_momentum)

    def forward(self, x: ME.SparseTensor, skip: ME.SparseTensor) -> ME.SparseTensor:
        return self.blocks(ME.cat(self.up(x), skip))


def scaled(planes: tuple[int, ...], width: float) -> tuple[int, ...]:
    """Channel counts ``planes`` × ``width``, rounded, at least 1 each."""
    return tuple(max(1, round(p * width)) for p in planes)


class Res16Encoder(nn.Module):
    """Stem + 4 encoder stages. Returns h at stride 16 (256 × width ch) and skips at strides 1, 2, 4, 8.
    ``channels``: the stem's and each stage's output channels (32, 32, 64, 128, 256 at width 1)."""

    def __init__(self, in_channels: int, stem_kernel_size: int, bn_momentum: float, width: float = 1.0):
        super().__init__()
        self.in_channels = in_channels
        self.channels = scaled((STEM_PLANES, *ENCODER_PLANES), width)
        stem = self.channels[0]
        self.stem = ConvNormAct(_conv(in_channels, stem, stem_kernel_size), stem, bn_momentum)
        stages, c = [], stem
        for planes, n in zip(self.channels[1:], ENCODER_BLOCKS):
            stages.append(EncoderStage(c, planes, n, bn_momentum))
            c = planes
        self.stages = nn.ModuleList(stages)

    def forward(self, x: ME.SparseTensor) -> tuple[ME.SparseTensor, list[ME.SparseTensor]]:
        if not isinstance(x, ME.SparseTensor):
            raise SparseInputError(f"Res16Encoder expects an ME.SparseTensor, got {type(x).__name__}")
        if x.F.ndim != 2 or x.F.shape[1] != self.in_channels:
            raise SparseInputError(
                f"Res16Encoder expects features [N, {self.in_channels}], got {list(x.F.shape)}"
            )
        if list(x.tensor_stride) != [1] * D:
            raise SparseInputError(f"Res16Encoder expects tensor_stride [1, 1, 1], got {list(x.tensor_stride)}")
        out = self.stem(x)
        skips = []
        for stage in self.stages:
            skips.append(out)
            out = stage(out)
        return out, skips


class Res16Decoder(nn.Module):
    """4 decoder stages: h at stride 16 + skips (strides 1, 2, 4, 8) -> features at stride 1 (96 × width ch).
    ``channels``: each stage's output channels (256, 128, 96, 96 at width 1)."""

    def __init__(self, encoder_channels: tuple[int, ...], bn_momentum: float, width: float = 1.0):
        """encoder_channels: ``Res16Encoder.channels`` (stem, then each stage): h's width and the skips'."""
        super().__init__()
        skip_channels = encoder_channels[-2::-1]  # 128, 64, 32, 32 at width 1
        self.channels = scaled(DECODER_PLANES, width)
        stages, c = [], encoder_channels[-1]
        for planes, n, c_skip in zip(self.channels, DECODER_BLOCKS, skip_channels):
            stages.append(DecoderStage(c, c_skip, planes, n, bn_momentum))
            c = planes
        self.stages = nn.ModuleList(stages)

    def forward(self, h: ME.SparseTensor, skips: list[ME.SparseTensor]) -> ME.SparseTensor:
        if len(skips) != len(self.stages):
            raise SparseInputError(f"Res16Decoder expects {len(self.stages)} skips, got {len(skips)}")
        out = h
        for stage, skip in zip(self.stages, reversed(skips)):
            expected = [s // 2 for s in out.tensor_stride]
            if list(skip.tensor_stride) != expected:
                raise SparseInputError(
                    f"Res16Decoder: skip at stride {list(skip.tensor_stride)}, expected {expected}"
                )
            out = stage(out, skip)
        return out


class Res16UNet34C(nn.Module):
    """SR-UNet Res16UNet34C (~37.85 M parameters for 3 -> 20 channels).

    ``encode``: x (stride 1, [N, in_channels]) -> h3D (stride 16, 256 ch) and 4 skips.
    ``decode``: -> z3D (stride 1, [N, out_channels]) on x's coordinate map (same rows, same order).
    State-dict prefixes: ``encoder.``, ``decoder.``, ``head.``.

    ``width`` scales every layer's channels (1.0: the published network; the tests at shipped batch sizes use
    narrower ones to fit a CPU's memory); ``encoder_channels`` / ``decoder_channels`` give the result.
    """

    def __init__(self, in_channels: int, out_channels: int, stem_kernel_size: int = 3, bn_momentum: float = 0.05,
                 width: float = 1.0):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"Res16UNet34C: channels must be >= 1, got in={in_channels}, out={out_channels}")
        if stem_kernel_size < 1 or not 0.0 <= bn_momentum <= 1.0:
            raise ValueError(
                f"Res16UNet34C: stem_kernel_size must be >= 1 and bn_momentum in [0, 1], "
                f"got {stem_kernel_size}, {bn_momentum}"
            )
        if not width > 0:
            raise ValueError(f"Res16UNet34C: width must be > 0, got {width}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.encoder = Res16Encoder(in_channels, stem_kernel_size, bn_momentum, width)
        self.decoder = Res16Decoder(self.encoder.channels, bn_momentum, width)
        self.encoder_channels = self.encoder.channels[-1]
        self.decoder_channels = self.decoder.channels[-1]
        self.head = ME.MinkowskiConvolution(
            self.decoder_channels, out_channels, kernel_size=1, bias=True, dimension=D
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ME/PointContrast init: Kaiming normal (fan_out, relu) on MinkowskiConvolution kernels, BN = (1, 0).

        As in the reference ``weight_initialization``, transposed convolutions keep ME's default uniform init
        (``MinkowskiConvolutionTranspose`` is not a ``MinkowskiConvolution``) and the head bias keeps its own.
        """
        for m in self.modules():
            if isinstance(m, ME.MinkowskiConvolution):
                ME.utils.kaiming_normal_(m.kernel, mode="fan_out", nonlinearity="relu")
            if isinstance(m, ME.MinkowskiBatchNorm):
                nn.init.constant_(m.bn.weight, 1.0)
                nn.init.constant_(m.bn.bias, 0.0)

    def encode(self, x: ME.SparseTensor) -> tuple[ME.SparseTensor, list[ME.SparseTensor]]:
        """x [N, in_channels] at stride 1 -> (h3D [M, encoder_channels] at stride 16, skips at strides 1, 2, 4, 8)."""
        return self.encoder(x)

    def decode(self, h: ME.SparseTensor, skips: list[ME.SparseTensor]) -> ME.SparseTensor:
        """h3D (stride 16, encoder_channels) + skips -> z3D [N, out_channels] at stride 1, rows as the input."""
        return self.head(self.decoder(h, skips))

    def forward(self, x: ME.SparseTensor) -> ME.SparseTensor:
        return self.decode(*self.encode(x))


def sparse_features_like(x: ME.SparseTensor, features: Tensor) -> ME.SparseTensor:
    """SparseTensor with ``features`` [N, C] on x's coordinate map key and manager (rows as ``x.F``)."""
    if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[0] != x.F.shape[0]:
        shape = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise SparseInputError(f"sparse_features_like: features must be [{x.F.shape[0]}, C], got {shape}")
    return ME.SparseTensor(
        features.to(x.F.device), coordinate_map_key=x.coordinate_map_key, coordinate_manager=x.coordinate_manager
    )
