"""xfed: federated fine-tuning of ChatGLM-family models over one Redis server, with secure aggregation."""
__version__ = "0.1.0"
