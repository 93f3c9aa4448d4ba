"""What a user sets for a tiled prediction: :class:`PredictConfig`, one flat frozen dataclass checked when it is
made (before any model is described or image read), and its narrow view :class:`TilingSpec` (the grid). Which
settings the fingerprint of an output records, and when, is declared here beside the fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seamfree.config import apply_renamed
from seamfree.errors import ConfigError
from seamfree.io.ome import NGFF_VERSIONS
from seamfree.tiling.blend import BlendWindow
from seamfree.tiling.normalize import IntensityNormalization
from seamfree.tiling.specs import Activation, OutputKind, OutputSpec, RuntimeSpec, Stitching, effective_tolerance
from seamfree.tiling.stitching import stitching

__all__ = ["DEFAULT_MAX_ERROR", "FINGERPRINTED_IF_SET", "NOT_FINGERPRINTED", "PredictConfig", "TilingSpec"]

# Settings that do not change a single output value, or that the plan records in its own terms (the grid and the
# resolved statistics): left out of the fingerprint, so that a resume may use another device or tiles per batch.
# The model's geometry (spatial_dims, in_channels) changes nothing it computes; the selected output is recorded
# as the fingerprint's "model_output" entry.
NOT_FINGERPRINTED = ("device", "tiles_per_batch", "batch_size", "overwrite", "normalization", "memory_budget",
                      "amp", "spatial_dims", "in_channels", "model_output", "voxel_size", "unit", "pyramid",
                      "channel_names", "sharding", "tile_timing")
# The near-exact mode's default bound on max |Δ| against exact prediction (probabilities).
DEFAULT_MAX_ERROR = 1e-3

# Recorded only when not at their default, so that outputs of versions without them still resume.
# (a layout or compiled kernels change last bits, like autocast: a resume must run the same computation)
FINGERPRINTED_IF_SET = {"labels": False, "ngff": "0.5", "max_error": DEFAULT_MAX_ERROR, "channels_last": False,
                         "compile": False}


@dataclass(frozen=True)
class TilingSpec:
    """The grid options of a prediction (see :class:`PredictConfig` for each field)."""

    core: int | tuple[int, ...] | None = None
    halo: str | int | tuple[int, ...] = "auto"
    stitching: Stitching = "crop"
    overlap: int | tuple[int, ...] | None = None
    tiles_per_batch: int | None = None
    memory_budget: int | None = None
    pinned_core: bool = False
    allow_small_halo: bool = False
    grid_offset: int | tuple[int, ...] = 0
    max_error: float = DEFAULT_MAX_ERROR
    tile_timing: bool = True


def _as_tuple(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value,) if isinstance(value, int) else tuple(value)


def _check_voxels(name: str, value: Any, flag: str) -> None:
    """ConfigError unless ``value`` is an int or a sequence of ints (bools and floats are no voxel counts)."""
    items = value if isinstance(value, tuple | list) else (value,)
    if not items or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in items):
        raise ConfigError(f"{name} must be whole voxels, an int or one int per spatial axis (CLI {flag}), got "
                          f"{value!r}; e.g. {name}=128 or {name}=(64, 128, 128)")


@dataclass(frozen=True)
class PredictConfig:
    """Options of :func:`~seamfree.predict`.

    Attributes
    ----------
    core : int or tuple, optional
        Core shape; by default chosen by :func:`suggest_tiling` from ``memory_budget``.
    halo : "auto", "effective", "effective:TOL", int or tuple
        Context on each side of a core; "auto" measures the receptive field and uses the halo it needs
        (:attr:`ReceptiveField.halo`). A smaller halo is an error in crop stitching unless ``allow_small_halo``.
        "effective[:TOL]" is the near-exact mode: the effective receptive field at gradient tolerance TOL (default
        1e-3), its error against the exact halo measured on sample windows before prediction and kept at most
        ``max_error`` by widening the halo (:mod:`seamfree.tiling.near_exact`).
    max_error : float
        Bound on the max |Δ| of the near-exact mode against exact prediction, on the activated output (CLI
        ``--max-error``).
    stitching : {"crop", "blend"}
        "crop" is exact when halo ≥ receptive field; "blend" averages overlapping cores with weights.
    overlap : int or tuple
        Core overlap for blending (default: a quarter of the core).
    blend_window : {"linear", "gaussian"}
    tiles_per_batch : int, optional
        Tiles per forward pass (default from :func:`suggest_tiling`).
    device : str
        "cpu", "cuda", "cuda:1", "mps", or "auto" (CUDA, then MPS, then the CPU; resolved when the config is made).
    amp : bool
        Mixed precision (bfloat16) on CUDA; ignored on CPU.
    tta : bool
        Average predictions over all flips of the spatial axes (exact under tiling too).
    channels_last : bool
        Batches in channels-last layout (``channels_last_3d`` in 3D): cuDNN's NHWC kernels, often faster with
        ``amp`` on recent GPUs (CLI ``--channels-last``; :mod:`seamfree.tiling.device`).
    compile : bool
        Run ``torch.compile`` of the model; the first batch of each shape compiles (CLI ``--compile``).
    normalization : IntensityNormalization
        Input intensity normalization; statistics computed once from the whole image unless given. The default,
        ``"auto"``, is what a bioimage.io package declares, else percentiles (1, 99.8).
    activation : {"auto", "none", "sigmoid", "softmax"}
        Applied to the model output; "auto": sigmoid/softmax for seamfree models that output logits,
        none for other models.
    output_kind : {"float32", "float16", "uint16", "uint8", "mask"}
        Probabilities (float32; float16: half the bytes, error below 5e-4), probabilities scaled to 0..65535 or
        0..255, or a mask (threshold for one channel, argmax otherwise).
    threshold : float
        Threshold for ``output_kind="mask"``.
    memory_budget : int, optional
        Bytes the tiles of one batch may use (activations), for the automatic core and tiles per batch.
    tile_timing : bool
        Let the automatic core time a few candidate tiles once per model and device and take the fastest
        (:func:`suggest_tiling`; CLI ``--no-tile-timing`` keeps the fewest computed voxels without timing).
    pinned_core : bool
        Error (instead of rounding up) when ``core`` is not a multiple of the network stride.
    allow_small_halo : bool
        Accept a halo smaller than the receptive field (not exact; for demonstrations and comparisons).
    overwrite : bool
        Delete an existing output path first instead of resuming into it.
    grid_offset : int or tuple
        Shift of the core boundaries (crop stitching), see :meth:`TileGrid.create`; diagnostics use it to put
        the seams elsewhere.
    spatial_dims, in_channels : int, optional
        The model's input, for models whose first convolution does not tell (CLI ``--spatial-dims``,
        ``--in-channels``).
    model_output : int or str, optional
        Index or key of the segmentation among a tuple/dict model output (CLI ``--output``).
    voxel_size, unit : optional
        Voxel size (one value, or one per spatial axis) and space unit written into the output's metadata for an
        input that records none (CLI ``--voxel-size``, ``--unit``); an input's own calibration wins.
    pyramid : bool
        Write the multiscale pyramid of an OME-Zarr output once level 0 is complete (CLI ``--no-pyramid``).
    labels : bool
        Also write the mask (``threshold``, or the argmax of several channels) as an OME-Zarr label image
        ``labels/mask`` next to the probabilities (CLI ``--labels``); a ``output_kind="mask"`` output is itself
        a label image.
    channel_names : sequence of str, optional
        Names of the output channels in the OME metadata (CLI ``--channel-names``).
    ngff : {"0.5", "0.4"}
        OME-NGFF version of an OME-Zarr output: 0.5 (zarr v3, sharded) or 0.4 (zarr v2) for older tools
        (CLI ``--ngff``).
    sharding : bool
        Store level 0 as shards of one tile core holding viewer-sized chunks (NGFF 0.5; CLI ``--no-sharding``
        makes each core one chunk).
    batch_size : int, optional
        Deprecated name of ``tiles_per_batch``.
    """

    core: int | tuple[int, ...] | None = None
    halo: str | int | tuple[int, ...] = "auto"
    stitching: Stitching = "crop"
    overlap: int | tuple[int, ...] | None = None
    blend_window: BlendWindow = "linear"
    tiles_per_batch: int | None = None
    device: str = "cpu"
    amp: bool = False
    tta: bool = False
    normalization: IntensityNormalization = field(default_factory=lambda: IntensityNormalization("auto"))
    activation: Activation = "auto"
    output_kind: OutputKind = "float32"
    threshold: float = 0.5
    memory_budget: int | None = None
    pinned_core: bool = False
    allow_small_halo: bool = False
    overwrite: bool = False
    grid_offset: int | tuple[int, ...] = 0
    spatial_dims: int | None = None
    in_channels: int | None = None
    model_output: int | str | None = None
    voxel_size: float | tuple[float, ...] | None = None
    unit: str | None = None
    pyramid: bool = True
    labels: bool = False
    channel_names: tuple[str, ...] | None = None
    ngff: str = "0.5"
    sharding: bool = True
    max_error: float = DEFAULT_MAX_ERROR
    tile_timing: bool = True
    channels_last: bool = False
    compile: bool = False
    batch_size: int | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        apply_renamed(self, "batch_size", "tiles_per_batch")
        mode = stitching(self.stitching)
        if self.tiles_per_batch is not None and self.tiles_per_batch < 1:
            raise ConfigError(f"tiles_per_batch must be >= 1, got {self.tiles_per_batch}")
        # checked here, before any model is described or any image read: a typo fails in a second, not minutes
        if self.device == "auto":  # CUDA, then MPS, then the CPU: resolved once, here
            from seamfree.models.checkpoint import auto_device

            object.__setattr__(self, "device", auto_device())
        given: Any = self.normalization
        if isinstance(given, str):  # a method name: its statistics computed from the image
            object.__setattr__(self, "normalization", IntensityNormalization(given))  # type: ignore[arg-type]  # checked by it
        if not isinstance(self.normalization, IntensityNormalization):
            raise ConfigError(f"normalization must be an IntensityNormalization or a method name, got "
                              f"{self.normalization!r}; e.g. normalization='percentile'")
        for name, flag in (("core", "--core"), ("overlap", "--overlap")) + (
                (("halo", "--halo"),) if not isinstance(self.halo, str) else ()):
            if getattr(self, name) is not None:
                _check_voxels(name, getattr(self, name), flag)
        if self.core is not None and min(_as_tuple(self.core)) < 1:
            raise ConfigError(f"core must be positive voxels per axis (CLI --core), got {self.core}; leave it out "
                              "to let seamfree choose")
        if not isinstance(self.halo, str) and min(_as_tuple(self.halo)) < 0:
            raise ConfigError(f"halo must be non-negative voxels per side (CLI --halo), got {self.halo}; leave it "
                              "out for 'auto' (the measured receptive field)")
        if self.overlap is not None and not mode.overlap:
            raise ConfigError(f"overlap={self.overlap} (CLI --overlap) is the core overlap of stitching='blend'; "
                              "crop stitching has none: pass stitching='blend' (CLI --stitching blend) or drop it")
        if self.overlap is not None and min(_as_tuple(self.overlap)) < 0:
            raise ConfigError(f"overlap must be >= 0 voxels per axis, got {self.overlap}")
        if self.ngff not in NGFF_VERSIONS:
            raise ConfigError(f"ngff (CLI --ngff) must be one of {', '.join(NGFF_VERSIONS)}, got {self.ngff!r}")
        if self.labels and self.output_kind == "mask":
            raise ConfigError("labels=True (CLI --labels) writes a mask next to the probabilities; with "
                              "output_kind='mask' the output is the mask already: drop one of them")
        if isinstance(self.halo, str) and self.halo != "auto" and effective_tolerance(self.halo) is None:
            raise ConfigError(f"halo must be 'auto', 'effective', 'effective:TOL' or voxels per side, got "
                              f"{self.halo!r}")
        if effective_tolerance(self.halo) is not None and not mode.exact:
            raise ConfigError(f"halo {self.halo!r} (the near-exact mode) measures its error against exact crop "
                              "stitching; use it with stitching='crop'")
        if not 0.0 < self.max_error < math.inf:
            raise ConfigError(f"max_error (CLI --max-error) must be a positive bound on max |Δ|, got "
                              f"{self.max_error!r}")
        # the specs validate their own fields
        _ = self.runtime, self.output

    @property
    def tiling(self) -> TilingSpec:
        """The grid options."""
        return TilingSpec(self.core, self.halo, self.stitching, self.overlap, self.tiles_per_batch,
                          self.memory_budget, self.pinned_core, self.allow_small_halo, self.grid_offset,
                          self.max_error, self.tile_timing)

    @property
    def runtime(self) -> RuntimeSpec:
        """How a batch runs (``activation`` may still be "auto": the plan resolves it for the model)."""
        return RuntimeSpec(self.device, self.amp, self.tta, self.activation, self.model_output,
                           channels_last=self.channels_last, compile=self.compile)

    @property
    def output(self) -> OutputSpec:
        """What is stored."""
        return OutputSpec(self.output_kind, self.threshold)
