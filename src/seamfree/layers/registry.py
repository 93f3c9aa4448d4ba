"""The normalization registry: every norm seamfree builds by name, and what it does at inference.

One table read by the layer factory, the audit, the training and study configurations and the results page,
so that "which norm is tile-wise" is written down once.

===================  ===========================  ============  ============  ==================
name                 label                        statistics    tile-wise     running statistics
===================  ===========================  ============  ============  ==================
``batch``            BatchNorm                    running       no            yes
``batchrenorm``      BatchRenorm                  running       no            yes
``instance``         InstanceNorm                 per-tile      yes           no
``instance_tracked`` InstanceNorm (tracked)       running       no            yes
``group``            GroupNorm                    per-tile      yes           no
``layer``            LayerNorm                    per-position  no            no
``layer_spatial``    LayerNorm (spatial)          per-tile      yes           no
``none``             none                         none          no            no
===================  ===========================  ============  ============  ==================

*statistics* is what a layer normalizes with in eval mode: ``running`` (fixed after training), ``per-tile``
(computed from the tile it sees: predictions depend on the tiling), ``per-position`` (each voxel on its own, over
channels) or ``none``. Norms with running statistics are the ones that recalibration changes and whose
train-mode and eval-mode outputs differ (train/eval disparity).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from torch import nn

from seamfree.config import did_you_mean
from seamfree.errors import ConfigError
from seamfree.layers.batchrenorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d
from seamfree.layers.layernorm import ChannelLayerNorm, SpatialLayerNorm, group_norm

__all__ = [
    "NORMS",
    "NORM_NAMES",
    "NormSpec",
    "Statistics",
    "check_norm_name",
    "display_order",
    "norm_spec",
    "norms_where",
]

Statistics = Literal["running", "per-tile", "per-position", "none", "unknown"]


@dataclass(frozen=True)
class NormSpec:
    """One named normalization.

    Attributes
    ----------
    name : str
        The name used in configurations and on the command line.
    label : str
        How tables and figures call it.
    statistics : {"running", "per-tile", "per-position", "none"}
        What it normalizes with at inference (eval mode).
    running_statistics : bool
        Whether it keeps running statistics (recalibration applies; train and eval mode differ).
    note : str
        One line for the audit: why it is or is not tile-dependent.
    layers : dict
        The layer constructor for 1, 2 and 3 spatial dimensions (``num_features`` first, then the layer's own
        keyword options).
    """

    name: str
    label: str
    statistics: Statistics
    running_statistics: bool
    note: str
    layers: dict[int, Callable[..., nn.Module]] = field(repr=False, compare=False)

    @property
    def tile_dependent(self) -> bool:
        """Whether its eval-mode output at a voxel depends on the tile it sees (no halo makes tiles agree)."""
        return self.statistics == "per-tile"

    @property
    def computes_statistics(self) -> bool:
        """Whether it computes its statistics from its input at inference (per tile or per position)."""
        return self.statistics in ("per-tile", "per-position")


def _identity(num_features: int) -> nn.Module:
    return nn.Identity()


def _same_for_all_dims(constructor: Callable[..., nn.Module]) -> dict[int, Callable[..., nn.Module]]:
    return dict.fromkeys((1, 2, 3), constructor)


_INSTANCE = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}

NORMS: tuple[NormSpec, ...] = (
    NormSpec("batch", "BatchNorm", "running", True, "running statistics at inference (eval mode)",
             {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}),
    NormSpec("batchrenorm", "BatchRenorm", "running", True, "BatchRenorm: running statistics at inference",
             {1: BatchRenorm1d, 2: BatchRenorm2d, 3: BatchRenorm3d}),
    NormSpec("instance", "InstanceNorm", "per-tile", False, "statistics of each tile and channel",
             {d: partial(cls, affine=True) for d, cls in _INSTANCE.items()}),
    NormSpec("instance_tracked", "InstanceNorm (tracked)", "running", True,
             "instance statistics in training, running statistics at inference",
             {d: partial(cls, affine=True, track_running_stats=True) for d, cls in _INSTANCE.items()}),
    NormSpec("group", "GroupNorm", "per-tile", False, "statistics of each tile over channel groups",
             _same_for_all_dims(group_norm)),
    NormSpec("layer", "LayerNorm", "per-position", False, "normalizes channels at each voxel",
             _same_for_all_dims(ChannelLayerNorm)),
    NormSpec("layer_spatial", "LayerNorm (spatial)", "per-tile", False,
             "LayerNorm over channels and space: statistics of the whole tile", _same_for_all_dims(SpatialLayerNorm)),
    NormSpec("none", "none", "none", False, "no normalization", _same_for_all_dims(_identity)),
)

NORM_NAMES: tuple[str, ...] = tuple(spec.name for spec in NORMS)

_BY_NAME = {spec.name: spec for spec in NORMS}


def check_norm_name(name: str, *, where: str = "normalization") -> str:
    """Return the registry key of ``name`` (case and ``-`` forgiven); ConfigError listing the known names.

    Examples
    --------
    >>> check_norm_name("Batch-Renorm".replace("-", ""))
    'batchrenorm'
    """
    key = name.lower().replace("-", "_")
    if key not in _BY_NAME:
        raise ConfigError(f"unknown {where} {name!r}{did_you_mean(key, NORM_NAMES)}; "
                          f"known names: {', '.join(NORM_NAMES)}")
    return key


def norm_spec(name: str) -> NormSpec:
    """Return the :class:`NormSpec` of ``name``."""
    return _BY_NAME[check_norm_name(name)]


def norms_where(*, tile_dependent: bool | None = None, running_statistics: bool | None = None,
                computes_statistics: bool | None = None) -> tuple[str, ...]:
    """Return the names (registry order) whose properties match every given value.

    Examples
    --------
    >>> norms_where(tile_dependent=True)
    ('instance', 'group', 'layer_spatial')
    >>> norms_where(running_statistics=True)
    ('batch', 'batchrenorm', 'instance_tracked')
    """
    return tuple(
        spec.name for spec in NORMS
        if (tile_dependent is None or spec.tile_dependent == tile_dependent)
        and (running_statistics is None or spec.running_statistics == running_statistics)
        and (computes_statistics is None or spec.computes_statistics == computes_statistics)
    )


def display_order(name: str) -> int:
    """Return the sort key of ``name`` in tables: fixed statistics first, then computed ones; unknown last."""
    if name not in _BY_NAME:
        return 2 * len(NORMS)
    return NORM_NAMES.index(name) + (len(NORMS) if _BY_NAME[name].computes_statistics else 0)
