"""modelfleet: Kubernetes-native training and serving of heterogeneous LLM fleets."""

__version__ = "0.1.0"
