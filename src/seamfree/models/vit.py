"""A small UNETR-like ViT segmentation model for 2D images.

Patch embedding (a strided convolution), transformer blocks with token LayerNorm (pre-norm), and a
convolutional decoder: the final token grid is upsampled by transposed convolutions, joined with the
token grid of the middle block and with a full-resolution convolutional stem, through ``conv -> norm -> ReLU``
blocks whose normalization is chosen by name (as in the study, where only the decoder norm varies).

Self-attention mixes all tokens of the tile, so this model is tile-dependent whatever its norm: tiled
prediction is never exact (the audit reports it). It is here because the study covers ViT architectures.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seamfree._version import REMOVED_IN
from seamfree.errors import ConfigError, ShapeError
from seamfree.models.unet import ConvBlock, check_divisible

__all__ = ["ViTSegmenter"]


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens (N, L, D)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"embed_dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: token LayerNorm -> attention, token LayerNorm -> MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTSegmenter(nn.Module):
    """UNETR-like 2D segmentation model.

    Parameters
    ----------
    in_channels, out_channels : int
        Input and output channels.
    img_size : int
        Training patch size; position embeddings are learned for it and interpolated for other sizes.
    token_size : int
        Side of the square each token covers, a power of two; the network stride.
    embed_dim, depth, heads : int
        Transformer width, number of blocks and attention heads.
    norm : str
        Decoder normalization, from :data:`seamfree.layers.NORM_NAMES`.
    norm_options : dict, optional
        Options of the decoder norm layers.
    features : int
        Channels of the full-resolution decoder level.
    patch_size : int, optional
        Deprecated name of ``token_size`` (in seamfree, *patch* is a training patch).

    Examples
    --------
    >>> import torch
    >>> net = ViTSegmenter(1, 1, img_size=32, token_size=8, embed_dim=32, depth=2, heads=2).eval()
    >>> net(torch.zeros(1, 1, 32, 48)).shape
    torch.Size([1, 1, 32, 48])
    """

    architecture = "vit"
    spatial_dims = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        img_size: int = 128,
        token_size: int = 8,
        embed_dim: int = 96,
        depth: int = 4,
        heads: int = 4,
        norm: str = "batchrenorm",
        norm_options: dict[str, object] | None = None,
        features: int = 16,
        patch_size: int | None = None,
    ) -> None:
        super().__init__()
        if patch_size is not None:
            warnings.warn(f"ViTSegmenter(patch_size=...) is deprecated and will be removed in seamfree "
                          f"{REMOVED_IN}; use token_size=...",
                          DeprecationWarning, stacklevel=2)
            token_size = patch_size
        if token_size < 2 or token_size & (token_size - 1):
            raise ConfigError(f"token_size must be a power of two >= 2, got {token_size}")
        if img_size % token_size:
            raise ConfigError(f"img_size {img_size} must be a multiple of token_size {token_size}")
        if depth < 2:
            raise ConfigError(f"depth must be >= 2 (the decoder uses the middle block), got {depth}")
        options = dict(norm_options or {})
        self.network_stride = (token_size, token_size)
        self.config: dict[str, object] = {
            "in_channels": in_channels, "out_channels": out_channels, "img_size": img_size,
            "token_size": token_size, "embed_dim": embed_dim, "depth": depth, "heads": heads,
            "norm": norm, "norm_options": options, "features": features,
        }
        grid = img_size // token_size
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, token_size, stride=token_size)
        self.position = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(embed_dim, heads) for _ in range(depth))
        self.token_norm = nn.LayerNorm(embed_dim)
        self.stem = ConvBlock(2, in_channels, features, norm, options)
        levels = int(math.log2(token_size))
        widths = [features * 2**level for level in range(levels + 1)]
        self.bottom = ConvBlock(2, 2 * embed_dim, widths[levels], norm, options)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(levels)):
            self.upsamplers.append(nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2))
            skip = features if level == 0 else 0
            self.decoders.append(ConvBlock(2, widths[level] + skip, widths[level], norm, options))
        self.head = nn.Conv2d(features, out_channels, 1)

    def _positions(self, grid: tuple[int, int]) -> Tensor:
        if tuple(self.position.shape[2:]) == grid:
            return self.position
        return F.interpolate(self.position, size=grid, mode="bicubic", align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ShapeError(f"ViTSegmenter expects input of shape (N, C, H, W), got {tuple(x.shape)}")
        check_divisible(x.shape[2:], self.network_stride)
        tokens = self.patch_embed(x)
        n, dim, height, width = tokens.shape
        tokens = (tokens + self._positions((height, width))).flatten(2).transpose(1, 2)
        middle = None
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index == len(self.blocks) // 2 - 1:
                middle = tokens
        assert middle is not None
        final = self.token_norm(tokens)
        grid = torch.cat([final, middle], dim=2).transpose(1, 2).reshape(n, 2 * dim, height, width)
        y = self.bottom(grid)
        for index, (up, decoder) in enumerate(zip(self.upsamplers, self.decoders)):
            y = up(y)
            if index == len(self.decoders) - 1:
                y = torch.cat([y, self.stem(x)], dim=1)
            y = decoder(y)
        return self.head(y)
