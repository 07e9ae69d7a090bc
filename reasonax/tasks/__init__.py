"""Synthetic reasoning tasks and an offline byte-level tokenizer, for the demo and the tests."""
