"""Routing requests across models: cost-of-pass, capability profiles, cascades."""
