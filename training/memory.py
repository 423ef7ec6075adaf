"""Whether a config's training step fits the memory of the device it trains on, decided from the
settings alone, before anything is built: a [net] or batch far too large is a one-line error, not
minutes of building followed by the kernel's out-of-memory kill."""
import dataclasses
import os

import torch

from hourglass_transformer import size
from hourglass_transformer.errors import HourglassError
from infra.devices import memory_bytes
from infra.errors import UserError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class TrainingMemory:
    parameters: int
    state_bytes: int  # weights, gradients, AdamW moments, EMA
    activation_bytes: int  # kept for the backward pass of one step

    @property
    def total(self):
        return self.state_bytes + self.activation_bytes


def training_memory(cfg):
    """A lower bound on what one training step of `cfg` holds on each device, or None when [net]
    describes no model (building it then says why):

        state        4 bytes x parameters x (weights + gradients + AdamW's 2 moments [+ the EMA])
        activations  batch_size x forwards x size.activations(...) x (2 bytes under a mixed
                     precision, else 4)

    `forwards` is the prior's unroll_steps (SUNDAE keeps every unrolled forward for backward), else
    1. Parameters are counted exactly (size.parameters); activations as size.activations documents.
    """
    net, data, tr = cfg.net, cfg.data, cfg.trainer
    shape = dict(num_tokens=data.vocab_size, dim=net.dim, depth=net.depth, shorten_factor=net.shorten_factor,
                 heads=net.nb_heads, dim_head=net.dim_head, ff_mult=net.ff_mult,
                 updown_sample_type=net.updown_sample_type, attn_resampling=net.attn_resampling,
                 attn_resampling_type=net.attn_resampling_type, resampling_layout=net.resampling_layout)
    try:
        parameters = size.parameters(**shape, rotary_pos_emb=net.use_rotary, max_grid=data.latent_shape,
                                     num_classes=net.num_classes if net.conditional else None)
        per_sample = size.activations(**shape, grid=data.latent_shape, attn_dropout=net.attn_dropout)
    except HourglassError:
        return None
    copies = 4 + (1 if tr.ema_decay > 0 else 0)
    forwards = getattr(cfg.prior, "unroll_steps", 1)
    value_bytes = 2 if "mixed" in str(tr.precision) else 4
    return TrainingMemory(parameters, 4 * parameters * copies, tr.batch_size * forwards * per_sample * value_bytes)


def device_memory(device_type):
    """(bytes, whose) of the memory a training process on `device_type` ("cpu" | "cuda") has."""
    if device_type == "cuda":
        # this process's GPU, as Lightning will assign it (LOCAL_RANK under DDP and torchrun)
        props = torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", 0)))
        return props.total_memory, f"the {props.name}'s"
    return memory_bytes(), "this machine's"


def check_training_memory(cfg, device_type, what):
    """UserError naming `what` (the config file) with the estimate and the limit when one training
    step of `cfg` cannot fit in the device's memory (training_memory, a lower bound, against the
    device's whole memory: a refused config would not have fitted even on an idle machine)."""
    need = training_memory(cfg)
    if need is None:
        return
    have, whose = device_memory(device_type)
    if need.total > have:
        raise UserError(
            f"{what}: [net] is too large to train with trainer.batch_size = {cfg.trainer.batch_size}: a step "
            f"needs at least {need.total / GiB:,.1f} GiB ({need.parameters:,} parameters with their gradients, "
            f"AdamW moments and EMA: {need.state_bytes / GiB:,.1f} GiB; activations kept for the backward "
            f"pass: {need.activation_bytes / GiB:,.1f} GiB), more than {whose} {have / GiB:,.1f} GiB")
