class HourglassError(ValueError):
    """A bad hourglass config or input (grid, tokens, class labels); one line, names the value."""
