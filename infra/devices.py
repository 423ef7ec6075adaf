"""Devices: the --device of the sampling scripts, the processes of a training run, and the CPU
threads of every script (configure_threads, called first by each entry point)."""
import dataclasses
import os
import time

import torch

from infra.errors import UserError


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name):
    """A torch.device from a --device value; UserError for a bad name or a missing GPU."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"--device {name!r}: not a device; expected e.g. 'cpu', 'cuda' or 'cuda:1'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name!r}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name!r}: only {torch.cuda.device_count()} GPU(s) are visible")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name!r}: unsupported device type; expected 'cpu' or 'cuda'")
    return device


@dataclasses.dataclass(frozen=True)
class Devices:
    """Where a run trains, resolved from --accelerator / --devices / --num-nodes."""
    accelerator: str  # "cpu" | "gpu"
    devices: int  # per node
    num_nodes: int

    @property
    def world_size(self):
        return self.devices * self.num_nodes


def resolve_devices(accelerator="auto", devices="auto", num_nodes=1):
    """The accelerator and the number of processes, decided before anything is built, so that
    what depends on the world size (learning-rate scaling, codebook windows) sees the real one."""
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise UserError("--accelerator gpu: no CUDA device is available")
    if devices == "auto":
        count = torch.cuda.device_count() if accelerator == "gpu" else 1
    elif str(devices).isdigit() and int(devices) >= 1:
        count = int(devices)
    else:
        raise UserError(f"--devices {devices!r}: expected a number >= 1 or 'auto'")
    if accelerator == "gpu" and count > torch.cuda.device_count():
        raise UserError(f"--devices {count}: only {torch.cuda.device_count()} GPU(s) are visible")
    if num_nodes < 1:
        raise UserError(f"--num-nodes {num_nodes}: expected a number >= 1")
    return Devices(accelerator, count, num_nodes)


def check_compiler(device, what):
    """UserError naming `what` when torch.compile could not build kernels for `device`: on the
    CPU its inductor backend compiles C++ and needs a C++ compiler (it looks for g++), which a
    bare machine may lack; without this check the first step fails deep inside torch."""
    if torch.device(device).type != "cpu":
        return
    from torch._inductor import exc
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise UserError(f"{what}: torch.compile on the CPU builds C++ kernels and found no C++ compiler "
                        f"(g++); install one, or run without compilation") from None


def memory_bytes():
    """This machine's physical memory, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_in_memory(num_parameters, what):
    """UserError when `num_parameters` float32 weights alone exceed this machine's memory (a
    clear message instead of an allocator traceback)."""
    need, have = 4 * num_parameters, memory_bytes()
    if need > have:
        raise UserError(f"{what} is too large: {num_parameters:,} parameters need {need / 2**30:,.1f} GiB "
                        f"in float32, more than this machine's {have / 2**30:,.1f} GiB")



# --- CPU threads ----------------------------------------------------------------------------------

THREADS_ENV = "SUNDAE_THREADS"
# One intra-op thread unless told otherwise. Measured on a 2-core machine (bench/README.md, the
# CPU threads): with torch's default of one thread per core, a second process on the machine
# (another job, a test run) leaves torch's OpenMP threads spinning at every barrier for a core
# they do not get, and a digits training step becomes 2.5-8x slower while burning 2-4x the CPU
# time; with one thread it slows only by the share of the core it loses. The default is fixed,
# not guessed from the current load, because the thread count changes float results in the last
# bits: a run and its resumed continuation must use the same count to stay bit-exact.
DEFAULT_THREADS = 1
DEFAULT_INTEROP_THREADS = 1  # nothing here runs inter-op parallel work (torch.jit.fork)


@dataclasses.dataclass(frozen=True)
class ThreadSettings:
    """What configure_threads chose, and from where."""
    intra_op: int  # torch.get_num_threads() after the call
    inter_op: int  # torch.get_num_interop_threads() after the call
    source: str  # "argument" | "SUNDAE_THREADS" | "OMP_NUM_THREADS" | "default"


def usable_cores():
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times(stat_path):
    """(all, idle) jiffies of the machine from /proc/stat's first line (idle counts iowait)."""
    with open(stat_path) as f:
        fields = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(fields), fields[3] + fields[4]


def busy_cores(interval=0.5, stat_path="/proc/stat"):
    """How many of the machine's cores other work kept busy over the next `interval` seconds (this
    process sleeps meanwhile), from /proc/stat; None where it cannot be read (not Linux)."""
    try:
        total0, idle0 = _cpu_times(stat_path)
        time.sleep(interval)
        total1, idle1 = _cpu_times(stat_path)
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / (total1 - total0))


def idle_cores(busy=None):
    """The usable cores no other work holds: usable_cores() less the cores busy now (rounded;
    `busy` overrides the reading), at least 1. Busy is measured over half a second (busy_cores),
    else read from the 1-minute load average, which lags: a job that ended a minute ago still
    counts in it. A snapshot: resolve it once per job."""
    if busy is None:
        busy = busy_cores()
    if busy is None:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, usable_cores() - round(busy))


def _parse_threads(value, what, allow_all=True):
    text = str(value).strip()
    if allow_all and text.lower() == "all":
        return usable_cores()
    if allow_all and text.lower() == "idle":
        return idle_cores()
    if what == "OMP_NUM_THREADS":
        text = text.split(",")[0].strip()  # OpenMP allows one count per nesting level: the first is ours
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        expected = "a whole number >= 1" + (", 'all' or 'idle'" if allow_all else "")
        raise UserError(f"{what}={value!r}: not a thread count; expected {expected}")
    return int(text)


def thread_count(threads=None, environ=None):
    """(intra-op threads, source) by the rule of configure_threads, without applying them."""
    environ = os.environ if environ is None else environ
    if threads is not None:
        return _parse_threads(threads, "threads"), "argument"
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = environ.get(name)
        if value is not None and value.strip():
            return _parse_threads(value, name, allow_all=name == THREADS_ENV), name
    return DEFAULT_THREADS, "default"


def configure_threads(threads=None, environ=None):
    """Set torch's CPU threads for this process; every script calls this first. Returns ThreadSettings.

    Intra-op threads, first of: `threads` (an int, "all" for every usable core, or "idle" for
    the cores other work leaves free now: idle_cores), the
    environment variable SUNDAE_THREADS (same values), OMP_NUM_THREADS (the standard variable,
    which torch also reads at import), else DEFAULT_THREADS (1: see above; on a machine of your
    own with a model large enough to share out, SUNDAE_THREADS=all is faster). A value that is
    not a thread count is a UserError. Inter-op threads are set to 1 where torch still allows it
    (only before any inter-op work in this process, and only once); otherwise they are left.
    """
    count, source = thread_count(threads, environ)
    torch.set_num_threads(count)
    if torch.get_num_interop_threads() != DEFAULT_INTEROP_THREADS:
        try:
            torch.set_num_interop_threads(DEFAULT_INTEROP_THREADS)
        except RuntimeError:  # already set once in this process, or its pool has started
            pass
    return ThreadSettings(torch.get_num_threads(), torch.get_num_interop_threads(), source)
