"""Distillation losses, projectors and named methods."""
