"""bench/sampling.py runs end to end in its quick mode and prints every table."""
import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_sampling_bench_quick(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("sampling_bench", REPO / "bench" / "sampling.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--quick", "--digits-ckpt", str(REPO / "no-such.ckpt"), "--threads", "1"])
    out = capsys.readouterr().out
    for expected in ("| model | early stop |", "| logits head (dim -> 8192), every position |",
                     "| logits head, the updated positions (p = 0.5) |", "| categorical draw, the updated",
                     "as before: about", "| bf16 |", "load at the end"):
        assert expected in out
    shares = [int(line.rsplit("|", 2)[1].strip().rstrip("%")) for line in out.splitlines()
              if line.startswith("| ") and line.rstrip().endswith("% |")]
    assert len(shares) == 6 and all(0 <= s <= 100 for s in shares)
