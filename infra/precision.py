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
    refuse_cpu_float16(device.type, precision == "16", "--precision 16", "--precision bf16")
    return device


def check_training_precision(device_type, precision, cfg_path=None):
    """UserError for a Lightning training precision this device cannot run: the rule of
    check_precision (Lightning itself would train "16-mixed" on the CPU in bfloat16, silently).
    The precision came from --precision, or from `cfg_path`'s trainer.precision when given."""
    if cfg_path is None:
        what, instead = f"--precision {precision}", "--precision bf16-mixed"
    else:
        what, instead = f"{cfg_path}: trainer.precision = {precision!r}", "trainer.precision = 'bf16-mixed'"
    refuse_cpu_float16(device_type, precision == "16-mixed", what, instead)


def refuse_cpu_float16(device_type, is_float16, what, instead):
    """The one rule of inference and training: float16 autocast only on a GPU."""
    if is_float16 and device_type != "cuda":
        raise UserError(f"{what}: float16 autocast needs a GPU; on the CPU use {instead}")
