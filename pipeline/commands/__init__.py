"""CLI subcommands: each module here defines ``register(subparsers)`` and a ``run(args) -> int``."""
