"""Evaluation: Cramér–Rao bounds, the likelihood fit, metrics and reports."""
