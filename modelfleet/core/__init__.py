"""Pieces every domain and backend shares: conditions, workloads, names, TLS."""
