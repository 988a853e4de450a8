"""Checkpoint files to ordered conv weights: safe loading, binding to an architecture, tracing."""
