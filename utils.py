"""Glue shared by the top-level scripts: one-line errors for user mistakes."""
import sys

import torch

from hourglass_transformer.errors import HourglassError
from sundae.errors import SundaeError
from vqgan.errors import VQGANError

USER_ERRORS = (SundaeError, VQGANError, HourglassError)


def run_cli(main, argv=None):
    """Run `main(argv)`; a user mistake becomes `error: ...` on stderr and exit status 2."""
    try:
        code = main(argv)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"
