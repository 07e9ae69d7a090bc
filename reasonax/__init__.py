"""reasonax: a JAX-native post-training stack for small math-reasoning language models."""

__version__ = "0.1.0"
