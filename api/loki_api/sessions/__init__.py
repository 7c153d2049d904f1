"""Sessions: resolving the CLI, supervising one child process per session, its output."""
