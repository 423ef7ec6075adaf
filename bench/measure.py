"""What every bench measures with: one timer, one matmul-throughput probe, the machine line.

    seconds, result = timed(fn, repeats=3, device=device)   # fastest of 3 after a warm-up
    probe = MatmulProbe(device); probe.measure(); ...; probe.measure()
    print(header(device, "float32"))                         # date, machine, torch, load average

Other processes can only add time, so a timing is the fastest of its repeats, and the matmul
throughput measured at several points of a run is the best of them: a spread between them means
other processes competed for the machine (MatmulProbe.warning).
"""
import math
import os
import platform
import time
from datetime import date
from pathlib import Path

import torch

# the reference matmul of each device type: (n, dtype) of an n x n @ n x n product
MATMUL = {"cpu": (2048, torch.float32), "cuda": (8192, torch.bfloat16)}
BUSY_SPREAD = 0.1  # matmul throughput varying by more than this during a run: the machine was busy


def sync(device):
    """Wait for the device's queued work (CUDA kernels run asynchronously); nothing on a CPU."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats=1, device=None, warmup=True):
    """(seconds, result): the fastest of `repeats` calls of fn, after one warm-up call, and the
    last call's result. warmup=False leaves the warm-up out, for callers that warm up themselves
    and interleave single timed calls of several workloads. On CUDA the clock starts and stops
    with the device idle."""
    result = fn() if warmup else None
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def matmul_label(device):
    """The reference matmul of a device, e.g. '2048x2048 float32'."""
    n, dtype = MATMUL[torch.device(device).type]
    return f"{n}x{n} {str(dtype).removeprefix('torch.')}"


def matmul_flops_per_s(device="cpu", repeats=5):
    """This machine's throughput on the device's reference matmul (MATMUL), FLOP/s: the fastest
    of `repeats` products after a warm-up."""
    device = torch.device(device)
    n, dtype = MATMUL[device.type]
    gen = torch.Generator(device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    seconds, _ = timed(lambda: a @ b, repeats, device)
    return 2 * n**3 / seconds


class MatmulProbe:
    """The matmul throughput measured at several points of a run (before, between and after its
    parts): `best` is the machine's, and a spread above BUSY_SPREAD means other processes
    competed during the run."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.samples = []

    def measure(self):
        self.samples.append(matmul_flops_per_s(self.device))
        return self.samples[-1]

    @property
    def best(self):
        return max(self.samples)

    @property
    def lowest(self):
        return min(self.samples)

    @property
    def label(self):
        return matmul_label(self.device)

    def summary(self):
        """One line: the reference matmul, the best throughput and the lowest measurement."""
        return (f"matmul throughput ({self.label}): {self.best / 1e9:.0f} GFLOP/s (lowest of {len(self.samples)} "
                f"measurements during the run: {self.lowest / 1e9:.0f})")

    def warning(self, where="during the run", advice="rerun when it is quiet"):
        """The busy-machine warning, or None when the measurements agree."""
        if self.lowest >= (1 - BUSY_SPREAD) * self.best:
            return None
        return (f"WARNING: matmul throughput varied by {100 * (1 - self.lowest / self.best):.0f}% {where}: "
                f"other processes competed for the machine; {advice}")


def cpu_name():
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device, precision=None):
    """The machine a run measures: the GPU's name, or the CPU's with its cores and torch threads;
    then the precision when given."""
    device = torch.device(device)
    if device.type == "cuda":
        text = torch.cuda.get_device_name(device)
    else:
        text = f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    return f"{text}, {precision}" if precision else text


def load_average():
    """'1.00 0.50 0.25 (1, 5, 15 min)': the load average, nan where the system has none."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)"


def header(device, precision=None, versions=()):
    """The first line of a bench's output: date, machine, torch (and `versions`), load average."""
    parts = [f"# {date.today()}", machine(device, precision), f"torch {torch.__version__}", *versions,
             f"load avg {load_average()}"]
    return "  ".join(parts)
