"""Evaluation: the field's standard metrics (training/eval/metrics.py) and task runners."""
