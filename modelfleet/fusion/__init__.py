"""Knowledge fusion of heterogeneous LLMs: distillation and weight merging."""
