from infra.errors import UserError


class PriorError(UserError):
    """A bad prior setting, sampling argument or model output; one line, names the value."""
