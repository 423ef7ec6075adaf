from infra.errors import UserError


class VQGANError(UserError):
    """A bad VQ-GAN config or checkpoint; scripts print it as one line and exit 2."""
