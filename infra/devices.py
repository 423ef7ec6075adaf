"""Devices: the --device of the sampling scripts and the processes of a training run."""
import dataclasses
import os

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

