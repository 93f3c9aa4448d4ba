"""Distributed prediction on dask.distributed (LocalCluster by default, any scheduler by address)."""

from seamfree.distributed.dask import (
    ClusterConfig,
    DistributedReport,
    cluster_runner,
    predict_distributed,
    start_local_cluster,
)

__all__ = ["ClusterConfig", "DistributedReport", "cluster_runner", "predict_distributed", "start_local_cluster"]
