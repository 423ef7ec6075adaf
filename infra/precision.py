"""Inference precision: sampling and evaluation under autocast, weights kept in float32."""
import contextlib

import torch

from infra.errors import UserError

INFERENCE_PRECISIONS = ("32", "bf16", "16")


@contextlib.contextmanager
def inference_precision(device, precision="32"):
    """Autocast the block to bfloat16 ("bf16", CPU or GPU) or float16 ("16", GPU only); "32" is
    plain float32. Callers keep what must stay exact (softmax and categorical draws) in float32."""
    device = check_precision(device, precision)
    if precision == "32":
        yield
        return
    with torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16):
        yield


def check_precision(device, precision):
    """The torch.device, or UserError for a precision this device cannot run."""
    device = torch.device(device)
    if precision not in INFERENCE_PRECISIONS:
        raise UserError(f"--precision {precision!r}: expected one of {', '.join(INFERENCE_PRECISIONS)}")
    if precision == "16" and device.type != "cuda":
        raise UserError("--precision 16: float16 autocast needs a GPU; on the CPU use --precision bf16")
    return device
