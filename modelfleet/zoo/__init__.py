"""A zoo of tiny language models trained on CPU on skills with exact answers.

No model hub is reachable where the platform is built and tested, so it grows its own
models: Llama and Qwen2 architectures, two BPE vocabularies, different sizes and different
skills. Each is a standard Hugging Face directory with a ``zoo.json`` of held-out accuracy
per skill, so serving, routing, fusion and federated training can be judged by accuracy.

``modelfleet.zoo.cache.ensure_model(name)`` returns a model's cached directory, training
it the first time.
"""
