"""The benchmarks, run from the repository root as modules (bench/README.md has their tables):

    python -m bench.backbone        the hourglass backbone against a vanilla transformer
    python -m bench.training        training-step throughput of the SUNDAE prior
    python -m bench.sampling        sampling speed: early stop, a step's parts, precision, compile
    python -m bench.priors          the priors' sampling cost at equal parameter count (and quality)
    python -m bench.digits_search   train, sample and score digits recipes and samplings
    python -m bench.ablations       the paper's claims as an ablation table on digits

The scripts only wire the project's packages to the shared helpers: bench.measure (the timer,
the matmul-throughput probe, the machine line), bench.flops (FLOP counts) and bench.configs (the
benches' models come from configs, built by the priors' registry). The top layer: bench may
import every package, and no package imports bench (tests/test_layers.py).
"""
