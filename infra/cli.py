"""What every script's entry point shares: one-line errors for user mistakes."""
import argparse
import sys

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


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage mistakes are one-line UserErrors (so exit 2 through run_cli, and the
    same `error: ...` line as every other mistake); the script's docstring is its --help text."""

    def __init__(self, doc, **kwargs):
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message):
        raise UserError(f"{self.prog}: {message}")
