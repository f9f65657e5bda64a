"""Evaluation: GSM8K-style exact match, lm-evaluation-harness, before/after comparison."""
