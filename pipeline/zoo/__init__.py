"""What to process: model metadata (``ModelSpec``), zoo files and the RobustBench catalog."""
