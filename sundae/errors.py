class SundaeError(ValueError):
    """A user mistake (bad config, file, or argument); scripts print it as one line and exit 2."""
