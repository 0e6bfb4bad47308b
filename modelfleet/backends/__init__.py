"""Where workloads run: KubeRay objects on a cluster, or a local Ray."""
