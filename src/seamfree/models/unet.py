"""A 2D/3D U-Net with any normalization and anisotropic per-level scale factors.

Block design (as in 3D U-Net and torch-em): each level has two ``conv(3) -> norm -> ReLU`` units
(post-activation norm placement, convolution bias only when there is no norm). The encoder downsamples with
max-pooling, the decoder upsamples with a transposed convolution whose kernel equals the scale factor, then
concatenates the skip connection. Convolutions zero-pad ("same" size), so the output has the input's spatial
shape, provided every spatial size is a multiple of :attr:`UNet.network_stride`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from seamfree.errors import ConfigError, ShapeError
from seamfree.layers.factory import create_norm_layer

__all__ = ["UNet", "check_divisible"]

FinalActivation = Literal["sigmoid", "softmax"] | None

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_UP = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def check_divisible(shape: Sequence[int], stride: Sequence[int], *, what: str = "input") -> None:
    """Raise ShapeError unless every spatial size in ``shape`` is a multiple of ``stride``."""
    bad = [size % s for size, s in zip(shape, stride)]
    if any(bad):
        fixed = tuple(math.ceil(size / s) * s for size, s in zip(shape, stride))
        raise ShapeError(
            f"{what} spatial shape {tuple(shape)} must be divisible by the network stride {tuple(stride)} "
            f"on every axis; pad or crop it, e.g. to {fixed} (seamfree.predict does this for you)"
        )


def _activation(name: FinalActivation) -> nn.Module:
    if name is None:
        return nn.Identity()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "softmax":
        return nn.Softmax(dim=1)
    raise ConfigError(f"final_activation must be None, 'sigmoid' or 'softmax', got {name!r}")


class ConvBlock(nn.Sequential):
    """Two ``conv -> norm -> ReLU`` units."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, norm: str, norm_options: dict[str, object]
    ) -> None:
        conv = _CONV[spatial_dims]
        bias = norm == "none"
        super().__init__(
            conv(in_channels, out_channels, 3, padding=1, bias=bias),
            create_norm_layer(norm, out_channels, spatial_dims, norm_options),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1, bias=bias),
            create_norm_layer(norm, out_channels, spatial_dims, norm_options),
            nn.ReLU(inplace=True),
        )


def _normalize_scale_factors(
    scale_factors: Sequence[int | Sequence[int]] | None, depth: int, spatial_dims: int
) -> tuple[tuple[int, ...], ...]:
    if scale_factors is None:
        return tuple((2,) * spatial_dims for _ in range(depth))
    if len(scale_factors) != depth:
        raise ConfigError(
            f"scale_factors needs one entry per level (depth={depth}), got {len(scale_factors)}: "
            f"{list(scale_factors)!r}"
        )
    levels = []
    for factor in scale_factors:
        per_axis = (factor,) * spatial_dims if isinstance(factor, int) else tuple(int(f) for f in factor)
        if len(per_axis) != spatial_dims or any(f < 1 for f in per_axis):
            raise ConfigError(
                f"each scale factor must be a positive int or {spatial_dims} positive ints, got {factor!r}"
            )
        levels.append(per_axis)
    return tuple(levels)


class UNet(nn.Module):
    """U-Net for 1D/2D/3D segmentation with a configurable normalization.

    Parameters
    ----------
    spatial_dims : {2, 3}
        Number of spatial axes (1 is accepted for tests).
    in_channels, out_channels : int
        Input and output channels.
    depth : int
        Number of downsampling steps; the network stride is the product of the scale factors.
    features : int
        Channels of the first level; doubled at every level.
    norm : str
        Normalization name from :data:`seamfree.layers.NORM_NAMES`; BatchRenorm by default.
    norm_options : dict, optional
        Options of the norm layers (e.g. the BatchRenorm schedule).
    scale_factors : sequence, optional
        Per-level downsampling, an int or one int per axis, e.g. ``[(1, 2, 2), (1, 2, 2), (2, 2, 2)]`` for
        anisotropic EM. Default 2 on every axis.
    final_activation : {None, "sigmoid", "softmax"}
        Applied to the output; None (logits) is what the trainer expects.

    Attributes
    ----------
    network_stride : tuple of int
        Total downsampling per axis; input sizes must be multiples of it.
    config : dict
        Constructor arguments, stored in checkpoints.

    Examples
    --------
    >>> import torch
    >>> net = UNet(2, 1, 1, depth=2, features=4, norm="batchrenorm").eval()
    >>> net.network_stride
    (4, 4)
    >>> net(torch.zeros(1, 1, 16, 24)).shape
    torch.Size([1, 1, 16, 24])
    """

    architecture = "unet"

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        depth: int = 4,
        features: int = 16,
        norm: str = "batchrenorm",
        norm_options: dict[str, object] | None = None,
        scale_factors: Sequence[int | Sequence[int]] | None = None,
        final_activation: FinalActivation = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if depth < 0 or features < 1 or in_channels < 1 or out_channels < 1:
            raise ConfigError(
                f"UNet needs depth >= 0 and positive channels, got depth={depth}, features={features}, "
                f"in_channels={in_channels}, out_channels={out_channels}"
            )
        factors = _normalize_scale_factors(scale_factors, depth, spatial_dims)
        options = dict(norm_options or {})
        self.spatial_dims = spatial_dims
        self.scale_factors = factors
        self.network_stride = tuple(math.prod(level[axis] for level in factors) for axis in range(spatial_dims))
        self.config: dict[str, object] = {
            "spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels,
            "depth": depth, "features": features, "norm": norm, "norm_options": options,
            "scale_factors": [list(level) for level in factors], "final_activation": final_activation,
        }
        widths = [features * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        channels = in_channels
        for level in range(depth):
            self.encoders.append(ConvBlock(spatial_dims, channels, widths[level], norm, options))
            self.pools.append(_POOL[spatial_dims](factors[level]))
            channels = widths[level]
        self.bottleneck = ConvBlock(spatial_dims, channels, widths[depth], norm, options)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            up: type[nn.Module] = _UP[spatial_dims]
            self.upsamplers.append(up(widths[level + 1], widths[level], factors[level], stride=factors[level]))
            self.decoders.append(ConvBlock(spatial_dims, 2 * widths[level], widths[level], norm, options))
        self.head = _CONV[spatial_dims](widths[0], out_channels, 1)
        self.final_activation = _activation(final_activation)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != self.spatial_dims + 2:
            raise ShapeError(
                f"UNet({self.spatial_dims}D) expects input of shape (N, C, *spatial) with "
                f"{self.spatial_dims} spatial axes, got shape {tuple(x.shape)}"
            )
        check_divisible(x.shape[2:], self.network_stride)
        skips = []
        for encoder, pool in zip(self.encoders, self.pools):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips)):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.final_activation(self.head(x))
