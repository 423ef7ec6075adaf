"""Filter a training run's console output for the demo: the training progress bar redrawn on one
line, and the lines a user must see (which step ran, notes, errors); everything else (Lightning's
banners, warnings, the validation bars) stays in the full log the demo keeps beside it.

    python train.py ... 2>&1 | tee -a demo.log | python scripts/progress_filter.py
"""
import re
import sys

SHOWN = ("training step:", "note:", "warning:", "error:", "step ")  # whole lines passed through
ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
BAR = re.compile(r"Epoch \d+:[^\]]*\]")  # tqdm's bar up to its closing bracket (a warning may follow it)


def main():
    bar, width, buffer = False, 0, ""  # the bar on the current line, its width; text after the last \r or \n
    while True:
        data = sys.stdin.read(256)
        if not data:
            break
        buffer += data
        *parts, buffer = re.split(r"[\r\n]", buffer)
        for part in parts:
            text = ESCAPES.sub("", part).strip()
            if BAR.match(text):  # tqdm's training bar: redraw it in place
                text = BAR.match(text).group(0)[:150]
                sys.stdout.write("\r" + text.ljust(width))
                bar, width = True, len(text)
            elif text.startswith(SHOWN):
                sys.stdout.write(("\n" if bar else "") + text + "\n")
                bar = False
        sys.stdout.flush()
    if bar:
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
