"""The ``filterlens`` command line: ``pipeline.cli.main`` parses, each other module here is one subcommand."""
