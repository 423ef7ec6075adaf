"""What every script's entry point shares: one-line errors for user mistakes, devices."""
import sys

import torch

from infra.errors import UserError


def run_cli(main, argv=None):
    """Run `main(argv)`; a user mistake becomes `error: ...` on stderr and exit status 2."""
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"
