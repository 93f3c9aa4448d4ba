"""Distributed prediction on dask.distributed (LocalCluster by default, any scheduler by address)."""

from seamfree.distributed.dask import ClusterConfig, DistributedReport, predict_distributed

__all__ = ["ClusterConfig", "DistributedReport", "predict_distributed"]
