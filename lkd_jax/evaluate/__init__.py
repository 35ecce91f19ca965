"""Evaluators (lkd_jax/evaluate): metrics, evaluation sets, runner and CLI."""
