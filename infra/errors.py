class UserError(ValueError):
    """A user mistake (bad config, file, argument or checkpoint). Scripts print it as one line,
    `error: <what>: <what was expected>`, and exit with status 2."""
