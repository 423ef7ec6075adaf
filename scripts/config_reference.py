"""Print the config reference (every key, its default and its one-line doc) generated from the
config dataclasses, or rewrite the block of docs/guide.md with it.

    PYTHONPATH=. python scripts/config_reference.py                 # print it
    PYTHONPATH=. python scripts/config_reference.py --write docs/guide.md
"""
from pathlib import Path

from infra.cli import ArgumentParser, run_cli
from infra.errors import UserError
from infra.files import atomic_path
from training.reference import BEGIN, END, reference


def main(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("--write", metavar="FILE", help="replace the generated block in FILE")
    args = p.parse_args(argv)
    if args.write is None:
        print(reference())
        return
    path = Path(args.write)
    text = path.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise UserError(f"{path}: expected one block between '{BEGIN}' and '{END}'")
    head, rest = text.split(BEGIN)
    with atomic_path(path) as tmp:
        tmp.write_text(head + reference() + rest.split(END, 1)[1])
    print(f"wrote the config reference into {path}")


if __name__ == "__main__":
    run_cli(main)
