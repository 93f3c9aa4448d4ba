"""Foreign networks written as plain torch, as users write them (none of them seamfree's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TorchEmStyleUNet(nn.Module):
    """A torch-em-like 2D U-Net: conv blocks with InstanceNorm, max pooling, transposed-conv upsampling, skips."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, features: int = 4, depth: int = 2) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=True),
                                 nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=True),
                                 nn.ReLU())

        widths = [features * 2 ** i for i in range(depth + 1)]
        self.encoders = nn.ModuleList([block(in_channels, widths[0])] +
                                      [block(widths[i], widths[i + 1]) for i in range(depth)])
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)])
        self.decoders = nn.ModuleList([block(2 * widths[i], widths[i]) for i in range(depth)])
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, decoder in zip(reversed(self.ups), reversed(self.decoders)):
            x = decoder(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


class CellposeStyleNet(nn.Module):
    """A Cellpose-3-like net: BatchNorm conv blocks, and a *style* vector — the deepest features averaged over
    the whole input with ``avg_pool2d(kernel = input size)``, normalized and fed back into the decoder. It returns
    ``(flows and cell probability, style)``, as Cellpose does."""

    def __init__(self, in_channels: int = 2, features: int = 8) -> None:
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(in_channels, features, 3, padding=1), nn.BatchNorm2d(features), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(features, 2 * features, 3, padding=1), nn.BatchNorm2d(2 * features),
                                   nn.ReLU())
        self.style_to_decoder = nn.Linear(2 * features, features)
        self.up = nn.Sequential(nn.Conv2d(2 * features, features, 3, padding=1), nn.BatchNorm2d(features), nn.ReLU())
        self.head = nn.Conv2d(features, 3, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.down1(x)
        deep = self.down2(F.max_pool2d(skip, 2))
        style = F.avg_pool2d(deep, kernel_size=deep.shape[-2:]).flatten(1)  # Cellpose's make_style
        style = style / (style.square().sum(dim=1, keepdim=True).sqrt() + 1e-6)
        y = self.up(F.interpolate(deep, scale_factor=2.0, mode="nearest"))
        y = y + self.style_to_decoder(style)[:, :, None, None]
        return self.head(y + skip), style


class MedianNorm(nn.Module):
    """A custom normalization no audit can know: subtracts each channel's median over the tile."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        median = x.flatten(2).median(dim=-1).values
        return x - median[..., None, None]


class CustomNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = MedianNorm()
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.norm(self.conv1(x))))


class NoConvolution(nn.Module):
    """Its input geometry cannot be read from any weight, and it runs on anything."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class ChannelMixer(nn.Module):
    """Mixes 5 input channels per voxel (no convolution): no 2D or 3D probe of 1 to 4 channels runs."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x.movedim(1, -1)).movedim(-1, 1)
