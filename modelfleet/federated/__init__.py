"""Federated LoRA fine-tuning: planning, aggregation and the training runtime."""
