"""Normalization layers: BatchRenorm, the norm registry and factory, conversion, recalibration and the audit."""

from seamfree.layers.audit import LayerAudit, NormAudit, audit_norms, classify_layer
from seamfree.layers.batchrenorm import (
    BatchRenorm1d,
    BatchRenorm2d,
    BatchRenorm3d,
    BatchRenormNd,
    RenormSchedule,
    set_renorm_schedule,
)
from seamfree.layers.convert import convert_norm, recalibrate_norm
from seamfree.layers.factory import create_norm_layer, get_norm_layer
from seamfree.layers.layernorm import ChannelLayerNorm, SpatialLayerNorm
from seamfree.layers.registry import NORM_NAMES, NORMS, NormSpec, norm_spec, norms_where

__all__ = [
    "NORMS",
    "NORM_NAMES",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "BatchRenormNd",
    "ChannelLayerNorm",
    "LayerAudit",
    "NormAudit",
    "NormSpec",
    "RenormSchedule",
    "SpatialLayerNorm",
    "audit_norms",
    "classify_layer",
    "convert_norm",
    "create_norm_layer",
    "get_norm_layer",
    "norm_spec",
    "norms_where",
    "recalibrate_norm",
    "set_renorm_schedule",
]
