"""The filter dataset's table schemas (YAML files beside this module).

These files are the single source of truth for every column: the Parquet writer,
the validator, the SQL views and the dataset card all read them through
``pipeline.dataset.schema``.
"""
