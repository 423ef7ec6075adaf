"""The training module's EMA update equals torch's AveragedModel.update_parameters bit for bit."""
import copy
import tomllib

import torch

from tests.helpers import TINY_CONFIG
from training.config import config_from_dict
from training.module import PriorModule


def tiny_config():
    return config_from_dict(tomllib.loads(TINY_CONFIG.format(runs="runs", data="data/tiny")), warn=False)


def test_the_foreach_ema_is_averaged_models_update_bit_for_bit():
    cfg = tiny_config()
    torch.manual_seed(0)
    module = PriorModule(cfg, seed=0)
    reference = copy.deepcopy(module.ema)  # torch's own AveragedModel, updated the documented way
    g = torch.Generator().manual_seed(1)
    for _ in range(4):  # the first update copies, the later ones average
        with torch.no_grad():
            for p in module.model.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        module._update_ema()
        reference.update_parameters(module.model)
        for (name, ours), theirs in zip(module.ema.state_dict().items(), reference.state_dict().values()):
            assert torch.equal(ours, theirs), name
    assert int(module.ema.n_averaged) == 4
    # a module restored from a checkpoint reads n_averaged from it and goes on averaging (no fresh copy)
    restored = PriorModule(cfg, seed=0)
    restored.load_state_dict(module.state_dict())
    restored.on_load_checkpoint({})
    restored._update_ema()
    reference.update_parameters(restored.model)
    assert all(torch.equal(a, b) for a, b in zip(restored.ema.state_dict().values(), reference.state_dict().values()))


def test_loading_a_checkpoint_rereads_whether_the_ema_has_started():
    """A module that has averaged, then loads a checkpoint saved before any update, copies again."""
    cfg = tiny_config()
    torch.manual_seed(0)
    fresh = PriorModule(cfg, seed=0)  # n_averaged = 0
    reference = copy.deepcopy(fresh.ema)
    module = PriorModule(cfg, seed=0)
    for _ in range(2):
        module._update_ema()  # now it has started
    module.load_state_dict(fresh.state_dict())
    module.on_load_checkpoint({})
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(1.0)
    module._update_ema()
    reference.update_parameters(module.model)  # n_averaged 0: a copy of the model
    assert all(torch.equal(a, b) for a, b in zip(module.ema.state_dict().values(), reference.state_dict().values()))
