"""Normalization layers: BatchRenorm, the norm factory, conversion, recalibration and the norm audit."""

from seamfree.layers.audit import LayerAudit, NormAudit, audit_norms
from seamfree.layers.batchrenorm import (
    BatchRenorm1d,
    BatchRenorm2d,
    BatchRenorm3d,
    RenormSchedule,
    set_renorm_schedule,
)
from seamfree.layers.convert import convert_norm, recalibrate_norm
from seamfree.layers.factory import (
    NORM_NAMES,
    ChannelLayerNorm,
    SpatialLayerNorm,
    create_norm_layer,
    get_norm_layer,
)

__all__ = [
    "NORM_NAMES",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "ChannelLayerNorm",
    "LayerAudit",
    "NormAudit",
    "RenormSchedule",
    "SpatialLayerNorm",
    "audit_norms",
    "convert_norm",
    "create_norm_layer",
    "get_norm_layer",
    "recalibrate_norm",
    "set_renorm_schedule",
]
