"""Distributed prediction on dask.distributed (LocalCluster by default, any scheduler by address): the cluster
(:mod:`~seamfree.distributed.cluster`), the driver and its worker tasks (:mod:`~seamfree.distributed.dask`)."""

from seamfree.distributed.cluster import ClusterConfig, start_local_cluster
from seamfree.distributed.dask import DistributedReport, cluster_runner, predict_distributed

__all__ = ["ClusterConfig", "DistributedReport", "cluster_runner", "predict_distributed", "start_local_cluster"]
