"""Pure planners for heterogeneous-GPU training: inventory, cost model, sequence parallelism
and NIC-aware placement. Nothing here talks to Kubernetes or Ray; callers pass data in."""
