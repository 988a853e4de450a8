"""The filter dataset: table schemas, layout, atomic per-model writes, read-only query views."""
