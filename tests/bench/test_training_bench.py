"""bench.training: the training-step table runs (quickly, in this interpreter) and its numbers are
sane; its FLOP count is what torch's own counter sees for one step of the unrolled loss."""
import math
import re

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench import training
from priors.sundae import unrolled_loss
from training.module import PriorModule


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def table_rows(text):
    """The markdown table's rows as dicts of header -> cell."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def number(cell):
    return float(re.sub(r"[%M]$", "", cell))


@pytest.mark.usefixtures("keep_threads")
def test_quick_digits_table_is_sane(capsys):
    results = training.main(["--quick", "--shapes", "digits", "--device", "cpu", "--threads", "1"])
    out = capsys.readouterr().out
    assert "threads: 1 intra-op" in out and "3 * T * count_flops" in out and "load avg" in out
    [row] = table_rows(out)
    assert row["shape"] == "digits" and row["grid"] == "8x8" and row["vocab"] == "17" and row["batch"] == "32"
    assert row["params"] == "0.33M"
    [r] = results["cpu"]
    # the digits step: 2 unroll steps x (a forward + a backward of 2 forwards) of the [0, 6, 0]
    # hourglass without resampling attention, per sample: six valley layers on 16 tokens of dim 64
    # (4 heads of 16, feed-forward 256: (4*64*64 + 2*64*256) * 16 * 2 projections + 2*2*16*16*64
    # scores and mix = 1.6384 MFLOP each), the down- and up-projections of 16 patches (256 <-> 64:
    # 2*256*64*16 each) and the 17-way head on 64 tokens (2*64*17*64)
    valley = 6 * ((4 * 64 * 64 + 2 * 64 * 256) * 16 * 2 + 2 * 2 * 16 * 16 * 64)
    per_forward = 32 * (valley + 2 * (2 * 256 * 64 * 16) + 2 * 64 * 17 * 64)
    assert math.isclose(r["gflop"] * 1e9, 6 * per_forward, rel_tol=1e-9) and row["GFLOP/step"] == "2.12"
    for key in ("raw_ms", "lightning_ms"):
        assert 1 < r[key] < 60_000, r
    assert math.isclose(r["steps_s"], 1000 / r["lightning_ms"], rel_tol=1e-6)
    assert math.isclose(r["tokens_s"], 32 * 64 * r["steps_s"], rel_tol=1e-6)
    assert math.isclose(r["overhead_ms"], r["lightning_ms"] - r["raw_ms"], rel_tol=1e-6, abs_tol=1e-6)
    assert 0 < r["fraction"] < 1.5 and 0 < r["raw_fraction"] < 1.5  # a fraction of the machine, not a multiple
    assert math.isclose(number(row["% matmul (Lightning)"]), 100 * r["fraction"], abs_tol=0.51)
    assert r["matmul_gflop_s"] > 1
    assert re.search(r"target: digits Lightning step >= 40% of matmul throughput on CPU: \d+% -> (met|NOT met)", out)


def test_ffhq_shape_is_the_cpu_width_of_ffhq1024():
    args = training.parse_args(["--quick"])
    shape = {s.name: s for s in training.shapes(args, cuda=False)}["ffhq1024-cpu-width"]
    cfg = shape.cfg
    assert cfg.data.latent_shape == [32, 32] and cfg.data.vocab_size == 8192 and cfg.vqgan is None
    assert (cfg.net.dim, cfg.net.nb_heads, cfg.net.dim_head, cfg.net.depth, cfg.net.shorten_factor) == \
        (256, 4, 64, [2, 10, 2], 4)
    assert cfg.trainer.precision == "32" and cfg.trainer.batch_size == 1
    assert training.parse_args([]).ffhq_batch is None
    cuda = {s.name: s for s in training.shapes(training.parse_args([]), cuda=True)}
    assert cuda["ffhq1024-cpu-width"].cfg.trainer.precision == "bf16-mixed"
    assert cuda["digits"].cfg.trainer.precision == "bf16-mixed"
    # eager unless --compile asks (config/digits.toml's compile = 'auto' would depend on the machine)
    assert {s.cfg.trainer.compile for s in cuda.values()} == {False}
    compiled = training.shapes(training.parse_args(["--compile", "--shapes", "digits"]), cuda=False)
    assert [(s.name, s.cfg.trainer.compile) for s in compiled] == [("digits", False), ("digits (compiled)", True)]


def test_step_flops_match_torch_flop_counter():
    """3 * T * count_flops is the matmul FLOPs torch counts for T forwards and T backwards."""
    args = training.parse_args(["--quick"])
    cfg = {s.name: s for s in training.shapes(args, cuda=False)}["digits"].cfg
    torch.manual_seed(0)
    module = PriorModule(cfg)
    tokens = torch.randint(0, cfg.data.vocab_size, (cfg.trainer.batch_size, *cfg.data.latent_shape))
    labels = torch.randint(0, cfg.net.num_classes, (cfg.trainer.batch_size,))
    g = torch.Generator().manual_seed(0)
    # the math backend runs attention as matmuls, which the counter sees (the fused CPU kernel it does not)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = unrolled_loss(module.model, tokens, cfg.prior.unroll_steps, labels, g, num_tokens=cfg.data.vocab_size)
        out.loss.backward()
    assert training.step_flops(cfg, module.model) == counter.get_total_flops()


def test_fastest_block():
    assert training.fastest_block([9, 1, 2, 3, 4, 5], skip=1, block=2) == 1.5
    assert training.fastest_block([1, 2], skip=2, block=2) == math.inf


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the message for a machine without CUDA")
def test_cuda_table_without_a_gpu_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        training.main(["--quick", "--device", "cuda"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--device cuda" in err and "no CUDA device" in err
