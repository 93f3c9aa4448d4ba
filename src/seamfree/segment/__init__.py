"""Blockwise instance segmentation of predictions of any size, equal to the whole-image result: connected
components, seeded watershed and distance-transform watershed, per-block labels merged across block faces
(union-find over small tables), relabelled to consecutive ids, written as OME-Zarr labels."""

from seamfree.segment.blocks import BlockGrid
from seamfree.segment.components import Components, blockwise_components
from seamfree.segment.driver import SegmentConfig, SegmentResult, segment
from seamfree.segment.methods import METHODS

__all__ = ["METHODS", "BlockGrid", "Components", "SegmentConfig", "SegmentResult", "blockwise_components",
           "segment"]
