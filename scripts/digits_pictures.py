"""The README's digits pictures from a trained digits checkpoint: 100 class-balanced samples
(a row per seed, a column per class) and six held-out digits with their bottom half inpainted.

    PYTHONPATH=. python scripts/digits_pictures.py runs/digits/checkpoints/last.ckpt docs
"""
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from infra.cli import ArgumentParser, run_cli
from infra.files import atomic_path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "digits.toml"


def run(*args):
    subprocess.run([sys.executable, *map(str, args)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def stack_rows(paths, out, scale=2):
    """The inpainting rows (original, masked, inpaintings) one under another, enlarged."""
    rows = [Image.open(p).convert("RGB") for p in paths]
    w, h = rows[0].size
    sheet = Image.new("RGB", (w, h * len(rows)))
    for i, row in enumerate(rows):
        sheet.paste(row, (0, i * h))
    with atomic_path(out) as tmp:
        sheet.resize((scale * w, scale * h * len(rows)), Image.NEAREST).save(tmp, format="PNG")


def main(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        run("sample.py", "--cfg-path", CONFIG, "--resume", args.checkpoint, "--nb-samples", 100, "--batch-size", 100,
            "--class-balanced", "--out-dir", Path(work) / "samples", "--no-progress",
            "--grid", out / "digits-samples.png")
        run("inpaint.py", "--dataset-rows", *range(6), "--cfg-path", CONFIG, "--resume", args.checkpoint,
            "--block", 4, 0, 4, 8, "--nb-samples", 6, "--out-dir", Path(work) / "inpainting")
        stack_rows(sorted((Path(work) / "inpainting").glob("inpaint-*.png")), out / "digits-inpainting.png")
    print(f"wrote {out / 'digits-samples.png'} and {out / 'digits-inpainting.png'}")


if __name__ == "__main__":
    run_cli(main)
