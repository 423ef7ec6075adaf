"""bench.sampling runs end to end in its quick mode and prints every table."""
import pytest

from bench import sampling
from tests.helpers import REPO


@pytest.mark.slow
def test_sampling_bench_quick(capsys):
    sampling.main(["--quick", "--digits-ckpt", str(REPO / "no-such.ckpt"), "--threads", "1"])
    out = capsys.readouterr().out
    for expected in ("| model | early stop |", "| logits head (dim -> 8192), every position |",
                     "| logits head, the updated positions (p = 0.5) |", "| categorical draw, the updated",
                     "as before: about", "| bf16 |", "load at the end"):
        assert expected in out
    shares = {line.split("|")[1].strip(): int(line.rsplit("|", 2)[1].strip().rstrip("%"))
              for line in out.splitlines() if line.startswith("| ") and line.rstrip().endswith("% |")}
    assert len(shares) == 6 and all(s >= 0 for s in shares.values())
    # the parts of today's step lie within it; the "every position" rows are the step as it was
    # before (head and draw everywhere), which may cost more than today's whole step
    now = {name: s for name, s in shares.items() if "every position" not in name}
    assert len(now) == 4 and all(s <= 100 for s in now.values())
