"""Reproduces the project's models: data generators, training recipes and evaluation."""
