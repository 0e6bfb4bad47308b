"""The Flower App of a FedJob: a ServerApp running FedAvg over LoRA adapters and a ClientApp
fine-tuning them on one site's data. ``pyproject.toml`` here is the app's Flower manifest;
``flwr run`` builds this folder into the bundle that the SuperLink distributes."""
