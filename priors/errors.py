from infra.errors import UserError


class PriorError(UserError):
    """A user mistake in the prior's stage (config, dataset, checkpoint, sampling argument)."""
