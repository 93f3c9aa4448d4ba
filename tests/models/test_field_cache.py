"""The receptive field is measured once per model across processes: a second process reads it from the cache."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from seamfree.models import UNet, save_model
from seamfree.models.describe import clear_model_cache, describe_model
from seamfree.models.field_cache import cache_folder


def test_a_second_description_reads_the_receptive_field_and_a_bad_file_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SEAMFREE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    net = UNet(2, 1, 1, depth=2, features=4, norm="batchrenorm").eval()
    clear_model_cache()
    first = describe_model(net, probe=False)
    files = list(cache_folder().glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["data"]["radius"] == list(first.receptive_field.radius)
    clear_model_cache()  # a new process, as far as the in-memory cache goes
    second = describe_model(net, probe=False)
    assert second.receptive_field == first.receptive_field
    assert any("from the cache" in note for note in second.notes)
    files[0].write_text(json.dumps({"radius": "__import__('os')"}))  # not numbers: ignored, measured again
    clear_model_cache()
    third = describe_model(net, probe=False)
    assert third.receptive_field == first.receptive_field and not any("cache" in n for n in third.notes)
    other = UNet(2, 1, 1, depth=3, features=4, norm="batchrenorm").eval()  # other parameters: its own entry
    clear_model_cache()
    assert describe_model(other, probe=False).receptive_field.radius != first.receptive_field.radius
    monkeypatch.setenv("SEAMFREE_CACHE", "off")
    assert cache_folder() is None


def test_the_second_cli_run_skips_the_measurement(tmp_path):
    torch.manual_seed(0)
    model = save_model(UNet(3, 1, 1, depth=2, features=4, norm="batchrenorm").eval(), tmp_path / "m.pt")
    env_cache = {"SEAMFREE_CACHE": str(tmp_path / "cache")}
    import os

    runs = [subprocess.run([sys.executable, "-m", "seamfree.cli.main", "audit", str(model)], capture_output=True,
                           text=True, timeout=300, check=True, env={**os.environ, **env_cache}) for _ in range(2)]
    assert "from the cache" not in runs[0].stdout + runs[0].stderr
    assert "from the cache" in runs[1].stdout + runs[1].stderr


def test_the_forward_memory_is_measured_once_across_processes(tmp_path, monkeypatch):
    import seamfree.tiling.memory as memory

    monkeypatch.setenv("SEAMFREE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    net = UNet(2, 1, 1, depth=2, features=4, norm="batchrenorm").eval()
    memory._CACHE.clear()  # an earlier test may have measured this architecture in this process
    measured = memory.forward_memory(net, 1, (4, 4), digest="abc")
    assert measured.measured and measured.bytes_per_voxel > 0
    memory._CACHE.clear()  # a new process

    def not_again(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(memory, "peak_forward_bytes", not_again)
    assert memory.forward_memory(net, 1, (4, 4), digest="abc") == measured
