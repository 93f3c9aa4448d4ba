"""Training-step time of U-Nets with BatchRenorm vs BatchNorm on CPU (issue: foundation).

Usage::

    python benchmarks/layers.py [--repeats 7] [--out benchmarks/results/layers.json]

Times a full training step (forward, loss, backward, optimizer step) of a 2D and a 3D U-Net, alternating the
two norms in one process so both see the same machine state, and reports medians and the ratio. BatchRenorm is
measured after its warm-up (r and d active), and also "naive": an elementwise implementation of the same
formula, which is what the fused implementation is compared with.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from seamfree.layers.batchrenorm import BatchRenormNd
from seamfree.models import UNet


class NaiveBatchRenorm2d(BatchRenormNd):
    """Elementwise BatchRenorm (x - mu)/sigma * r + d, the textbook implementation, for comparison."""

    _spatial_dims = 2

    def _forward_train(self, x: torch.Tensor) -> torch.Tensor:
        r_max, d_max = self.current_bounds()
        self.num_batches_tracked.add_(1)
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, keepdim=True, unbiased=False)
        std = torch.sqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        running_std = torch.sqrt(self.running_var + self.eps).view(shape)
        r = (std.detach() / running_std).clamp(1 / r_max, r_max)
        d = ((mean.detach() - self.running_mean.view(shape)) / running_std).clamp(-d_max, d_max)
        y = (x - mean) / std * r + d
        with torch.no_grad():
            n = x.numel() / x.shape[1]
            self.running_mean.lerp_(mean.flatten(), self.momentum)
            self.running_var.lerp_(var.flatten() * n / (n - 1), self.momentum)
        return y * self.weight.view(shape) + self.bias.view(shape)


def _net(dims: int, norm: str, naive: bool) -> nn.Module:
    options = {"warmup_steps": 0, "ramp_steps": 0} if norm == "batchrenorm" else {}
    if dims == 2:
        net = UNet(2, 1, 1, depth=4, features=16, norm=norm, norm_options=options)
    else:
        net = UNet(3, 1, 1, depth=3, features=8, norm=norm, norm_options=options)
    if naive:
        for parent in net.modules():
            for name, child in parent.named_children():
                if isinstance(child, BatchRenormNd):
                    replacement = NaiveBatchRenorm2d(child.num_features, warmup_steps=0, ramp_steps=0)
                    setattr(parent, name, replacement)
    return net


def _step_time(net: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
    start = time.perf_counter()
    loss = nn.functional.binary_cross_entropy_with_logits(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def run(repeats: int) -> dict[str, object]:
    torch.manual_seed(0)
    results: dict[str, object] = {}
    settings = {2: ((4, 1, 256, 256), ["batch", "batchrenorm", "naive"]),
                3: ((2, 1, 32, 96, 96), ["batch", "batchrenorm"])}
    for dims, (shape, variants) in settings.items():
        x, y = torch.randn(shape), (torch.rand(shape) > 0.5).float()
        nets = {v: _net(dims, "batch" if v == "batch" else "batchrenorm", v == "naive").train() for v in variants}
        optimizers = {v: torch.optim.AdamW(n.parameters(), 1e-4) for v, n in nets.items()}
        times: dict[str, list[float]] = {v: [] for v in variants}
        for v in variants:  # warm-up, also moves BatchRenorm past its (zero-length) warm-up
            _step_time(nets[v], x, y, optimizers[v])
        for _ in range(repeats):
            for v in variants:
                times[v].append(_step_time(nets[v], x, y, optimizers[v]))
        medians = {v: statistics.median(t) for v, t in times.items()}
        entry: dict[str, object] = {"input_shape": list(shape), "median_seconds": medians,
                                    "all_seconds": times}
        entry["batchrenorm_over_batchnorm"] = medians["batchrenorm"] / medians["batch"]
        if "naive" in medians:
            entry["naive_over_batchnorm"] = medians["naive"] / medians["batch"]
        results[f"{dims}d"] = entry
        print(f"{dims}D U-Net, batch {shape}: " + ", ".join(f"{v} {m * 1000:.0f} ms" for v, m in medians.items())
              + f"; BatchRenorm/BatchNorm = {entry['batchrenorm_over_batchnorm']:.3f}"
              + (f", naive/BatchNorm = {entry['naive_over_batchnorm']:.3f}" if "naive" in medians else ""))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "layers.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = run(args.repeats)
    results["machine"] = {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "repeats": args.repeats}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
