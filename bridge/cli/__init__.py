"""The command line: parses arguments and hands them to the runtime (``main`` is the app)."""
