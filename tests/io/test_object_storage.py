"""Inputs on object storage: an OME-Zarr at ``s3://`` on a real S3-compatible server (moto's, started here on
127.0.0.1), credentials and endpoint from the usual environment variables, read by predict (one process and a
job array's shares) exactly as the same file on disk; outputs at URLs are refused with what to do instead."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from seamfree.cli.main import main
from seamfree.errors import ConfigError
from seamfree.models import UNet, save_model
from seamfree.tiling import PredictConfig, predict
from seamfree.tiling.shards import Shard

zarr = pytest.importorskip("zarr")
s3fs = pytest.importorskip("s3fs")

# zarr's asynchronous s3fs instances keep their aiohttp sessions to the end of the process; the module's teardown
# collects them (below) so that no later test meets them, and their "unclosed session" notes are expected here
pytestmark = [pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.filterwarnings("ignore::ResourceWarning")]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on 127.0.0.1 (stopped at the end)."""
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    else:
        server.kill()
        pytest.fail("moto's S3 server did not start")
    yield endpoint
    _close_clients()
    server.terminate()
    server.wait(timeout=10)


def _close_clients() -> None:
    """Close the S3 clients of every cached s3fs instance (theirs and seamfree's readers'), so that no aiohttp
    session is left for the garbage collector to complain about in a later test."""
    import gc

    import fsspec.asyn

    for filesystem in list(s3fs.S3FileSystem._cache.values()):
        client = getattr(filesystem, "_s3", None)
        if client is not None:
            fsspec.asyn.sync(filesystem.loop, client.close)
            filesystem._s3 = None
    s3fs.S3FileSystem.clear_instance_cache()
    gc.collect()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """Credentials and endpoint in the environment, as a user of S3 (or MinIO, Ceph) sets them; a new bucket."""
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", s3_server)):
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    filesystem = s3fs.S3FileSystem()
    bucket = f"seamfree-{time.monotonic_ns()}"
    filesystem.mkdir(bucket)
    return filesystem, bucket


def test_an_input_on_s3_predicts_as_the_same_file_on_disk(s3, tmp_path, rng):
    filesystem, bucket = s3
    image = rng.normal(size=(20, 72, 80)).astype(np.float32)
    local = zarr.create_array(str(tmp_path / "in.zarr"), shape=image.shape, chunks=(10, 32, 32), dtype="f4")
    local[:] = image
    filesystem.put(str(tmp_path / "in.zarr"), f"{bucket}/in.zarr", recursive=True)
    url = f"s3://{bucket}/in.zarr"
    torch.manual_seed(0)
    net = UNet(3, 1, 1, depth=2, features=4, norm="batchrenorm").eval()
    config = PredictConfig(core=(16, 32, 32), tiles_per_batch=1)
    expected = predict(net, str(tmp_path / "in.zarr"), config=config)
    np.testing.assert_array_equal(predict(net, url, config=config), expected)
    # the shares of a job array read it too, and write to a shared file system
    out = str(tmp_path / "sharded.zarr")
    for index in range(2):
        predict(net, url, out, config=config, shard=Shard(index, 2))
    np.testing.assert_array_equal(zarr.open_array(out + "/0", mode="r")[:], expected)
    # and the command line, credentials from the environment
    model = save_model(net, tmp_path / "m.pt")
    assert main(["predict", str(model), url, str(tmp_path / "cli.zarr"), "--core", "16,32,32", "--tiles-per-batch",
                 "1", "-q"]) == 0
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "cli.zarr" / "0"), mode="r")[:], expected)


def test_an_output_at_a_url_is_refused_with_what_to_do(s3, tmp_path, capsys):
    _, bucket = s3
    net = UNet(2, 1, 1, depth=2, features=4, norm="batchrenorm").eval()
    with pytest.raises(ConfigError, match="aws s3 sync"):
        predict(net, np.zeros((40, 40), np.float32), f"s3://{bucket}/out.zarr")
    model = save_model(net, tmp_path / "m.pt")
    np.save(tmp_path / "image.npy", np.zeros((40, 40), np.float32))
    assert main(["predict", str(model), str(tmp_path / "image.npy"), f"s3://{bucket}/out.zarr", "-q"]) == 2
    assert "is a URL" in capsys.readouterr().err
