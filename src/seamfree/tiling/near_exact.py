"""The near-exact mode: a halo from the *effective* receptive field, with its error measured before prediction.

The exact halo covers the theoretical receptive field (96 voxels for a depth-4 2D U-Net), yet the gradient of an
output voxel falls below 1e-3 of its peak a few voxels out (9 for the same network). ``halo="effective:TOL"``
uses that effective radius, rounded up to the network stride, and before the first tile runs compares it with the
exact halo: sample windows of the image are predicted with both, and the worst max |Δ| over their cores is the
error of the mode. When it exceeds half of ``max_error`` (the samples see part of the image) the halo widens,
towards the exact one, whose error is 0 by construction, until it does not. The comparison reads windows as the
real tiles do (reflect padding only past the image end), so what it measures is what the prediction does, not
a model of it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from seamfree.io.readers import ImageSource
from seamfree.tiling.engine import eval_mode, forward_batch, read_window
from seamfree.tiling.grid import round_up
from seamfree.tiling.normalize import IntensityNormalization
from seamfree.tiling.specs import DEFAULT_TOLERANCE, RuntimeSpec, effective_tolerance

__all__ = ["DEFAULT_TOLERANCE", "HaloCheck", "check_halo", "effective_tolerance", "widen"]

logger = logging.getLogger(__name__)

# The sample windows' exact-halo reads use about this share of the image's voxels, within these counts (fewer in
# 3D, where an exact window is large).
SAMPLE_SHARE = 0.1
MIN_SAMPLES = {2: 4, 3: 2}
MIN_SAMPLE_CORE = {2: 32, 3: 16}
MAX_SAMPLES = 16
# A halo is accepted when the sampled error is at most this share of the bound: the samples see part of the image,
# and the whole prediction's max |Δ| was up to 1.2× the sampled one in the tests.
SAFETY = 0.5


@dataclass(frozen=True)
class HaloCheck:
    """What the near-exact mode measured before predicting.

    Attributes
    ----------
    tolerance : float
        Gradient tolerance of the effective receptive field.
    effective_halo, exact_halo, halo : tuple of int
        The effective radius rounded up to the stride, the exact halo, and the halo used (widened if needed).
    max_error : float
        The bound asked for (on the activated output: probabilities for sigmoid/softmax).
    error : float
        Worst max |Δ| between the halo used and the exact halo over the sample windows' cores.
    flipped : int
        Sample voxels whose class (threshold 0.5, or argmax of several channels) differs.
    samples, voxels : int
        Sample windows compared, and the core voxels they hold.
    tried : tuple of (halo, error)
        Every halo measured, in order.
    """

    tolerance: float
    effective_halo: tuple[int, ...]
    exact_halo: tuple[int, ...]
    halo: tuple[int, ...]
    max_error: float
    error: float
    flipped: int
    samples: int
    voxels: int
    tried: tuple[tuple[tuple[int, ...], float], ...]

    def to_dict(self) -> dict[str, object]:
        return {"tolerance": self.tolerance, "effective_halo": list(self.effective_halo),
                "exact_halo": list(self.exact_halo), "halo": list(self.halo), "max_error": self.max_error,
                "error": self.error, "flipped": self.flipped, "samples": self.samples, "voxels": self.voxels,
                "tried": [[list(h), e] for h, e in self.tried]}

    def summary(self) -> str:
        if self.samples == 0 and self.error == 0.0 and self.halo != self.exact_halo:
            return (f"near-exact halo {self.halo} (exact {self.exact_halo}): one tile covers the image, so the "
                    "prediction is the whole image's (max |Δ| 0)")
        widened = f", widened from {self.effective_halo}" if self.halo != self.effective_halo else ""
        return (f"near-exact halo {self.halo} (effective receptive field at {self.tolerance:g}{widened}; exact "
                f"{self.exact_halo}): max |Δ| {self.error:.2e} against the exact halo on {self.samples} sample "
                f"windows ({self.voxels} voxels, {self.flipped} flipped), bound {self.max_error:g}")


def widen(halo: Sequence[int], exact: Sequence[int], stride: Sequence[int]) -> tuple[int, ...]:
    """The next halo to try: half as wide again (at least one stride more), never past the exact one."""
    return tuple(min(e, max(round_up(h + (h + 1) // 2, s), h + s)) for h, e, s in zip(halo, exact, stride))


def _sample_windows(shape: Sequence[int], padded: Sequence[int], core: Sequence[int], exact: Sequence[int],
                    stride: Sequence[int]) -> list[tuple[slice, ...]]:
    """Sample cores on the stride, spread evenly over the image, as far from its border as their exact windows
    need (touching it only where the image is too small); as many as ``SAMPLE_SHARE`` of the image allows."""
    dims = len(shape)
    reference = math.prod(min(c + 2 * e, p) for c, e, p in zip(core, exact, padded))
    count = int(min(MAX_SAMPLES, max(MIN_SAMPLES.get(dims, 2), SAMPLE_SHARE * math.prod(shape) / reference)))
    per_axis = max(1, math.ceil(count ** (1 / dims)))
    positions = []
    for n, p, c, e, s in zip(shape, padded, core, exact, stride):
        low, high = round_up(e, s), (p - c - e) // s * s
        if high < low:  # no interior window along this axis: anywhere the core fits
            low, high = 0, max(0, (p - c) // s * s)
        starts = sorted({low + (high - low) * (2 * i + 1) // (2 * per_axis) // s * s for i in range(per_axis)})
        positions.append([slice(a, min(a + c, n)) for a in starts if a < n])
    every = [tuple(positions[axis][i] for axis, i in enumerate(index))
             for index in np.ndindex(*(len(p) for p in positions))]
    step = max(1, len(every) // count)
    return every[::step][:count]


def _window(core: tuple[slice, ...], halo: Sequence[int], padded: Sequence[int],
            stride: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The read window of a core with ``halo`` (clipped to the padded image) and where the core lies in it."""
    read, crop = [], []
    for part, h, p, s in zip(core, halo, padded, stride):
        start = max(0, part.start - h)
        stop = min(round_up(part.stop, s) + h, p)
        read.append(slice(start, stop))
        crop.append(slice(part.start - start, part.stop - start))
    return tuple(read), tuple(crop)


def _classes(values: np.ndarray, activation: str) -> np.ndarray:
    if values.shape[0] > 1:
        return values.argmax(axis=0)
    return values[0] > (0.5 if activation in ("sigmoid", "softmax") else 0.0)


def check_halo(model: nn.Module, source: ImageSource, normalization: IntensityNormalization, runtime: RuntimeSpec,
               *, halo: Sequence[int], exact: Sequence[int], stride: Sequence[int], max_error: float,
               tolerance: float) -> HaloCheck:
    """Measure the error of ``halo`` against the ``exact`` one on sample windows, widening it until the error is
    at most ``SAFETY × max_error``.

    A sample core spans twice the halo tried (at least 32 voxels in 2D, 16 in 3D): its voxels next to the core
    boundary, where the error is largest, have at most as much context on the far side as those of larger cores,
    so the measured error errs on the safe side.
    """
    shape = tuple(source.spatial_shape)
    padded = tuple(round_up(n, s) for n, s in zip(shape, stride))
    start = tuple(min(h, e) for h, e in zip(halo, exact))
    trial, tried = start, []
    references: dict[tuple[tuple[int, int], ...], np.ndarray] = {}
    while True:
        least = MIN_SAMPLE_CORE.get(len(shape), 16)
        sample_core = tuple(min(round_up(max(2 * h, least), s), p) for h, s, p in zip(trial, stride, padded))
        if trial == tuple(exact):
            error, flipped, samples, voxels = 0.0, 0, 0, 0
        else:
            cores = _sample_windows(shape, padded, sample_core, exact, stride)
            error, flipped, voxels = 0.0, 0, 0
            with eval_mode(model), torch.inference_mode():
                for sample in cores:
                    ours = _predict(model, source, normalization, runtime, sample, trial, padded, stride)
                    key = tuple((part.start, part.stop) for part in sample)
                    if key not in references:
                        references[key] = _predict(model, source, normalization, runtime, sample, exact, padded,
                                                   stride)
                    truth = references[key]
                    error = max(error, float(np.abs(ours - truth).max()))
                    flipped += int((_classes(ours, runtime.activation) != _classes(truth, runtime.activation)).sum())
                    voxels += math.prod(truth.shape[1:])
            samples = len(cores)
        tried.append((trial, error))
        logger.info("near-exact halo %s: max |Δ| %.2e against the exact halo %s on %d sample windows (bound %g)",
                    trial, error, tuple(exact), samples, max_error)
        if error <= SAFETY * max_error:
            effective = tuple(min(h, e) for h, e in zip(halo, exact))
            return HaloCheck(tolerance, effective, tuple(exact), trial, max_error, error, flipped, samples, voxels,
                             tuple(tried))
        trial = widen(trial, exact, stride)


def _predict(model: nn.Module, source: ImageSource, normalization: IntensityNormalization, runtime: RuntimeSpec,
             core: tuple[slice, ...], halo: Sequence[int], padded: Sequence[int], stride: Sequence[int]) -> np.ndarray:
    read, crop = _window(core, halo, padded, stride)
    batch = normalization.apply(read_window(source, read))[None]
    return forward_batch(model, batch, runtime)[0][(slice(None), *crop)]
