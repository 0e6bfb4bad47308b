"""One artifact format and its URIs for the whole fleet.

Training jobs write models and LoRA adapters as Hugging Face directories; model pools read
them back through one URI syntax. The modules are imported one by one, so that the operator,
which only parses URIs, does not load boto3 or huggingface_hub.
"""
