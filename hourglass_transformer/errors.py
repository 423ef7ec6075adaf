from infra.errors import UserError


class HourglassError(UserError):
    """A bad hourglass config or input (grid, tokens, class labels); one line, names the value."""
