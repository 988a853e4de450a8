"""One model's conv weights to rows: the paper's metrics and the per-model extraction step."""
