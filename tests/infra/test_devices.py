"""Devices and the one Trainer builder: the world size is resolved before anything is built."""
from types import SimpleNamespace

import pytest
import torch

from infra.devices import Devices, resolve_device, resolve_devices
from infra.errors import UserError
from infra.trainer import build_trainer


def test_auto_on_a_cpu_machine_is_one_process():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; 'auto' then means every visible GPU")
    assert resolve_devices("auto", "auto", 1) == Devices("cpu", 1, 1)
    assert resolve_devices("cpu", "2", 3).world_size == 6


@pytest.mark.parametrize("args, fragment", [
    (("cpu", "two", 1), "--devices 'two'"),
    (("cpu", "0", 1), "--devices '0'"),
    (("cpu", "1", 0), "--num-nodes 0"),
])
def test_bad_device_counts_are_user_errors(args, fragment):
    with pytest.raises(UserError, match=fragment):
        resolve_devices(*args)


def test_sampling_devices_are_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="--device 'bogus': not a device"):
        resolve_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device 'cuda': CUDA is not available"):
            resolve_device("cuda")


def test_the_builder_gives_lightning_the_resolved_world_size(tmp_path):
    args = SimpleNamespace(wandb=False, no_save=False, wandb_project="p")
    common = dict(precision="32", max_steps=5, eval_every=5, checkpoint_every=5, log_every=1)
    trainer = build_trainer(args, resolve_devices("cpu", "2", 1), tmp_path, **common)
    assert trainer.world_size == 2 and trainer.num_devices == 2
    trainer = build_trainer(args, resolve_devices("cpu", "auto", 1), tmp_path, **common)
    assert trainer.world_size == 1
