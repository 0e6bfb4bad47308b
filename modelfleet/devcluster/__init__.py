"""A real local control plane (etcd + kube-apiserver on loopback) for demos and tests."""

from modelfleet.devcluster.cluster import LocalCluster, find_binaries

__all__ = ["LocalCluster", "find_binaries"]
