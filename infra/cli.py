"""What every script's entry point shares: one-line errors for user mistakes, and the flags of the
training scripts. Light on purpose (no torch, no Lightning): a script parses its arguments with
this before it imports anything heavy, so a usage mistake is answered at once."""
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


def int_at_least(low):
    """An argparse `type`: an int >= `low`, else the usage error `argument --x: expected ...`."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def add_run_args(parser):
    """The command-line flags every training script shares."""
    from infra.config import PRECISIONS  # here: the scripts that train no model need no config reader

    parser.add_argument("--resume", help="checkpoint to continue from (weights, optimisers, step, RNG)")
    parser.add_argument("--precision", choices=PRECISIONS, help="overrides the config's precision")
    parser.add_argument("--max-steps", type=int, help="overrides the config's max_steps")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a run directory that holds an earlier run (its "
                             "checkpoints and pictures are deleted; logs are kept)")
    parser.add_argument("--seed", type=int, default=None,
                        help="default 0; a resumed run continues with its checkpoint's seed")
    parser.add_argument("--wandb", action="store_true", help="log to wandb (WANDB_MODE=offline works offline)")
    parser.add_argument("--wandb-project", default="sundae-vqgan")
    parser.add_argument("--devices", default="auto", help="number of devices per node (or 'auto')")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--accelerator", default="auto", choices=["cpu", "gpu", "auto"])
    parser.add_argument("--no-save", action="store_true", help="write no checkpoints")
