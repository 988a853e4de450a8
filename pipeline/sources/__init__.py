"""Where checkpoints come from: zoo files, the RobustBench catalog, and fetching (download + verify)."""
