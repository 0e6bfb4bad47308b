"""LLM serving engines for ModelPool replicas behind one engine interface."""
