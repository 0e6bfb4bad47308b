"""Who may call an endpoint and how much: API keys, per-key limits, usage by key."""
