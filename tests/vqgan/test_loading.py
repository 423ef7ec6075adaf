"""Config parsing, checkpoint containers, safe unpickling and every bad input of `load_vqgan`.

Most tests write a tiny model's config and checkpoint into tmp_path, so they run without the
shared fixtures; the few that use ../shared/fixtures/vqgan skip when it is absent.
"""
import collections
import copy
import os
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from tests.helpers import SHARED_FIXTURES
from vqgan import VQGANError, build_vqgan, config_from_dict, load_vqgan, read_config
from vqgan.checkpoint import Inert, RestrictedUnpickler, load_state_dict

FIXTURES = SHARED_FIXTURES

AE_PARAMS = {
    "embed_dim": 4,
    "n_embed": 16,
    "ddconfig": {
        "double_z": False, "z_channels": 4, "resolution": 16, "in_channels": 3, "out_ch": 3,
        "ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1, "attn_resolutions": [8],
        "dropout": 0.0,
    },
    "lossconfig": {
        "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
        # never read, so it must not matter that this interpolation cannot resolve
        "params": {"perceptual_weight": "${oc.env:NO_SUCH_VARIABLE_FOR_VQGAN_TESTS}"},
    },
}
TINY = {
    "model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel",
              "params": AE_PARAMS},
    # irrelevant sections must be ignored, even an interpolation that cannot resolve
    "data": {"target": "main.DataModuleFromConfig", "params": {"root": "${oc.env:NO_SUCH_VAR}"}},
    "lightning": {"trainer": {"benchmark": True}},
}
NET2NET = {
    "model": {
        "target": "taming.models.cond_transformer.Net2NetTransformer",
        "params": {
            "cond_stage_config": "__is_unconditional__",
            "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT"},
            # a real Net2Net config names the VQ-GAN's own checkpoint; it must never be opened
            "first_stage_config": {
                "target": "taming.models.vqgan.VQModel",
                "params": {**AE_PARAMS, "ckpt_path": "/nonexistent/vqgan.ckpt"},
            },
        },
    },
}


# tiny models: one intra-op thread (conftest's single_thread) for the whole module
pytestmark = pytest.mark.usefixtures("single_thread")


def write_yaml(path, cfg):
    OmegaConf.save(OmegaConf.create(cfg), path)
    return path


def lightning_checkpoint(state_dict, **metadata):
    return {"epoch": 3, "global_step": 100, "pytorch-lightning_version": "1.0.8", **metadata,
            "state_dict": state_dict}


@pytest.fixture
def tiny(tmp_path):
    """(config path, checkpoint path, source model) for a small random VQ-GAN."""
    torch.manual_seed(0)
    model = build_vqgan(config_from_dict(TINY)).eval()
    cfg = write_yaml(tmp_path / "tiny.yaml", TINY)
    ckpt = tmp_path / "tiny.ckpt"
    torch.save(lightning_checkpoint(model.state_dict()), ckpt)
    return cfg, ckpt, model


def assert_same_weights(loaded, source):
    assert list(loaded.state_dict()) == list(source.state_dict())
    for (key, a), b in zip(loaded.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b.to(a.dtype)), key


def fixture_dir(name):
    path = FIXTURES / name
    if not (path / "config.yaml").is_file():
        pytest.skip(f"VQ-GAN fixture {name} not found in {FIXTURES}")
    return path


# --- containers --------------------------------------------------------------------------------


def test_lightning_checkpoint_round_trip(tiny):
    cfg, ckpt, source = tiny
    model = load_vqgan(cfg, ckpt)
    assert_same_weights(model, source)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.encode(x), source.encode(x))


def test_bare_state_dict_safetensors_and_half_precision(tiny, tmp_path):
    cfg, _, source = tiny
    bare, safe, half = tmp_path / "bare.pth", tmp_path / "w.safetensors", tmp_path / "half.pt"
    torch.save(source.state_dict(), bare)
    save_file(source.state_dict(), safe)
    torch.save({k: v.half() for k, v in source.state_dict().items()}, half)
    assert_same_weights(load_vqgan(cfg, bare), source)
    assert_same_weights(load_vqgan(cfg, safe), source)
    from_half = load_vqgan(cfg, half)
    assert from_half.encoder.conv_in.weight.dtype == torch.float32
    assert_same_weights(from_half, copy.deepcopy(source).half())


def test_fixture_exported_as_bare_state_dict_and_safetensors(tmp_path):
    """A real Lightning fixture re-saved in the other two containers gives the same indices."""
    d = fixture_dir("taming-f4")
    state = load_state_dict(d / "model.ckpt")
    autoencoder = {k: v for k, v in state.items() if not k.startswith("loss.")}
    torch.save(autoencoder, tmp_path / "bare.pth")
    save_file({k: v.contiguous() for k, v in autoencoder.items()}, tmp_path / "w.safetensors")
    x = torch.from_numpy(np.load(d / "input.npy"))
    expected = torch.from_numpy(np.load(d / "indices.npy"))
    for ckpt in (tmp_path / "bare.pth", tmp_path / "w.safetensors"):
        with torch.no_grad():
            assert torch.equal(load_vqgan(d / "config.yaml", ckpt).encode(x), expected)


def test_unrelated_keys_are_ignored_even_with_clashing_suffixes(tiny, tmp_path):
    cfg, _, source = tiny
    state = dict(source.state_dict())
    noise = {k: torch.zeros(7) for k in state}  # same suffixes, wrong shapes: must not be read
    extra = {
        **{f"model_ema.{k.replace('.', '')}": v for k, v in state.items()},
        "model_ema.decay": torch.tensor(0.999),
        **{f"cond_stage_model.{k}": v for k, v in noise.items()},
        **{f"loss.discriminator.{k}": v for k, v in noise.items()},
        "transformer.blocks.0.attn.mask": torch.ones(1, 1, 4, 4),
        "colorize": torch.randn(3, 5, 1, 1),
    }
    ckpt = tmp_path / "extra.ckpt"
    torch.save(lightning_checkpoint({**extra, **state}), ckpt)
    assert_same_weights(load_vqgan(cfg, ckpt), source)


def test_net2net_config_reads_first_stage_and_strips_prefix(tiny, tmp_path):
    _, _, source = tiny
    cfg = write_yaml(tmp_path / "net2net.yaml", NET2NET)
    state = source.state_dict()
    decoy = {f"cond_stage_model.{k}": torch.randn_like(v) for k, v in state.items()}
    checkpoint = {
        **{f"first_stage_model.{k}": v for k, v in state.items()},
        **decoy,
        "transformer.tok_emb.weight": torch.randn(16, 8),
    }
    ckpt = tmp_path / "net2net.ckpt"
    torch.save(lightning_checkpoint(checkpoint), ckpt)
    for legacy_cfg in (None, True):
        model = load_vqgan(cfg, ckpt, legacy_cfg=legacy_cfg)
        assert model.config.key_prefix == "first_stage_model."
        assert_same_weights(model, source)


def test_ldm_first_stage_config_of_a_diffusion_model(tmp_path):
    config = config_from_dict({
        "model": {
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                "first_stage_config": {
                    "target": "ldm.models.autoencoder.VQModelInterface",
                    "params": {**AE_PARAMS, "monitor": "val/rec_loss"},
                },
                "cond_stage_config": "__is_unconditional__",
            },
        }
    })
    assert config.key_prefix == "first_stage_model."
    assert config.quantizer == "vq" and config.n_embed == 16


# --- safe unpickling ---------------------------------------------------------------------------


class Exploit:
    """Unpickling this with the plain pickle module would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_exploit_inside_checkpoint_is_neutralised(tiny, tmp_path):
    cfg, _, source = tiny
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "exploit.ckpt"
    torch.save(lightning_checkpoint(source.state_dict(), hyper_parameters=Exploit(marker)), ckpt)
    torch.load(ckpt, weights_only=False)  # control: a plain unpickler does run the command
    assert marker.exists()
    marker.unlink()
    with pytest.raises(pickle.UnpicklingError):  # torch's own safe loader refuses the file
        torch.load(ckpt, weights_only=True)
    model = load_vqgan(cfg, ckpt)  # the weights still load...
    assert not marker.exists()  # ...and the command never ran
    assert_same_weights(model, source)


@pytest.mark.parametrize("container", ["raw_pickle", "zip_without_state_dict"])
def test_exploit_without_weights_is_refused(tiny, tmp_path, container):
    cfg, _, _ = tiny
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "exploit.ckpt"
    if container == "raw_pickle":
        ckpt.write_bytes(pickle.dumps({"state_dict": Exploit(marker)}, protocol=2))
    else:
        torch.save({"state_dict": Exploit(marker)}, ckpt)
    with pytest.raises(VQGANError, match=str(ckpt)):
        load_vqgan(cfg, ckpt)
    assert not marker.exists()


def test_restricted_unpickler_imports_and_calls_nothing():
    unpickler = RestrictedUnpickler(__import__("io").BytesIO(b""))
    assert unpickler.find_class("collections", "OrderedDict") is collections.OrderedDict
    system = unpickler.find_class("os", "system")
    assert system is not os.system and issubclass(system, Inert)
    ghost = unpickler.find_class("surely_not_installed_pkg.sub", "Thing")
    assert issubclass(ghost, Inert) and "surely_not_installed_pkg" not in sys.modules
    assert isinstance(ghost("rm -rf /")(), Inert)


def test_old_lightning_metadata_from_unimportable_classes(tiny, tmp_path, monkeypatch):
    """Callbacks keyed by a class and `AttributeDict` hyper-parameters holding OmegaConf
    objects, pickled from a module that does not exist at load time."""
    cfg, _, source = tiny
    stub = types.ModuleType("lightning_1_0_stub")

    class ModelCheckpoint:
        pass

    class AttributeDict(dict):  # torch's weights-only loader cannot fill dict subclasses
        pass

    for cls in (ModelCheckpoint, AttributeDict):
        cls.__module__, cls.__qualname__ = stub.__name__, cls.__name__
        setattr(stub, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, stub.__name__, stub)
    hparams = AttributeDict(ddconfig=OmegaConf.create(AE_PARAMS["ddconfig"]), embed_dim=4)
    metadata = {
        "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5), "monitor": None}},
        "optimizer_states": [{"state": {0: {"step": 3, "exp_avg": torch.zeros(3)}}}],
        "lr_schedulers": [],
        "hyper_parameters": hparams,
    }
    ckpt = tmp_path / "old.ckpt"
    torch.save(lightning_checkpoint(source.state_dict(), **metadata), ckpt)
    monkeypatch.delitem(sys.modules, stub.__name__)

    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, weights_only=True)
    model = load_vqgan(cfg, ckpt)
    assert_same_weights(model, source)
    assert stub.__name__ not in sys.modules


# --- bad inputs ---------------------------------------------------------------------------------


def test_missing_config_and_checkpoint(tiny, tmp_path):
    cfg, ckpt, _ = tiny
    with pytest.raises(VQGANError, match="nope.yaml: config not found"):
        load_vqgan(tmp_path / "nope.yaml", ckpt)
    with pytest.raises(VQGANError, match="checkpoint not found.*nope.ckpt"):
        load_vqgan(cfg, tmp_path / "nope.ckpt")
    with pytest.raises(VQGANError, match="checkpoint not found"):
        load_vqgan(cfg, tmp_path)  # a directory


def test_invalid_yaml(tiny, tmp_path):
    _, ckpt, _ = tiny
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  params: [1, 2\n  target: x\n")
    with pytest.raises(VQGANError, match=f"{bad}: invalid YAML"):
        load_vqgan(bad, ckpt)


@pytest.mark.parametrize(
    "edit, legacy_cfg, key",
    [
        (lambda c: c["model"].pop("params"), None, "'model.params'"),
        (lambda c: c.pop("model"), None, "'model'"),
        (lambda c: c["model"]["params"].pop("ddconfig"), None, "'model.params.ddconfig'"),
        (lambda c: c["model"]["params"].pop("n_embed"), None, "'model.params.n_embed'"),
        (lambda c: c["model"]["params"]["ddconfig"].pop("ch"), None, "'model.params.ddconfig.ch'"),
        (lambda c: c["model"]["params"]["ddconfig"].update(ch="32"), None, "model.params.ddconfig.ch: expected int, got '32'"),
        (lambda c: c, True, "'model.params.first_stage_config'"),
    ],
)
def test_config_errors_name_file_and_key(tiny, tmp_path, edit, legacy_cfg, key):
    _, ckpt, _ = tiny
    cfg = copy.deepcopy(TINY)
    edit(cfg)
    path = write_yaml(tmp_path / "edited.yaml", cfg)
    with pytest.raises(VQGANError) as err:
        load_vqgan(path, ckpt, legacy_cfg=legacy_cfg)
    assert str(path) in str(err.value) and key in str(err.value)


def test_interpolations_resolve_where_read(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["model"]["params"]["ddconfig"]["z_channels"] = "${model.params.embed_dim}"
    cfg["model"]["params"]["ddconfig"]["ch_mult"] = [1, "${model.params.embed_dim}"]
    config = read_config(write_yaml(tmp_path / "interp.yaml", cfg))
    assert config.ddconfig.z_channels == 4 and config.ddconfig.ch_mult == (1, 4)
    cfg["model"]["params"]["ddconfig"]["ch"] = "${oc.env:NO_SUCH_VARIABLE_FOR_VQGAN_TESTS}"
    path = write_yaml(tmp_path / "broken.yaml", cfg)
    with pytest.raises(VQGANError, match=f"{path}: model.params.ddconfig.ch: cannot resolve"):
        read_config(path)


def test_forcing_plain_layout_on_a_net2net_config(tmp_path):
    path = write_yaml(tmp_path / "net2net.yaml", NET2NET)
    with pytest.raises(VQGANError, match="unsupported autoencoder target.*Net2NetTransformer"):
        read_config(path, legacy_cfg=False)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"remap": "codes.npy"}, "remap is not supported"),
        ({"ddconfig": {**AE_PARAMS["ddconfig"], "ch": 24}}, "multiple of 32"),
        ({"ddconfig": {**AE_PARAMS["ddconfig"], "double_z": True}}, "double_z must be false"),
        ({"ddconfig": {**AE_PARAMS["ddconfig"], "attn_type": "flash"}}, "ddconfig.attn_type: expected one of 'vanilla', 'linear', 'none', got 'flash'"),
    ],
)
def test_unsupported_config_values(params, message):
    cfg = {"model": {"target": "taming.models.vqgan.VQModel", "params": {**AE_PARAMS, **params}}}
    with pytest.raises(VQGANError, match=message):
        config_from_dict(cfg, source="cfg.yaml")


def test_gumbel_needs_embed_dim_equal_z_channels():
    params = {**AE_PARAMS, "embed_dim": 8}
    cfg = {"model": {"target": "taming.models.vqgan.GumbelVQ", "params": params}}
    with pytest.raises(VQGANError, match="embed_dim == ddconfig.z_channels"):
        config_from_dict(cfg)


def test_truncated_checkpoint(tiny, tmp_path):
    cfg, ckpt, _ = tiny
    data = ckpt.read_bytes()
    for cut in (len(data) // 2, 40):
        truncated = tmp_path / f"cut{cut}.ckpt"
        truncated.write_bytes(data[:cut])
        with pytest.raises(VQGANError, match=f"cannot read checkpoint {truncated}"):
            load_vqgan(cfg, truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(VQGANError, match=f"cannot read checkpoint {garbage}"):
        load_vqgan(cfg, garbage)


def test_torchscript_archive_is_refused(tiny, tmp_path):
    """torch.load would pass such a file to torch.jit.load, which runs the archive's code."""
    cfg, _, _ = tiny
    archive = tmp_path / "scripted.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("scripted/data.pkl", pickle.dumps({}))
        z.writestr("scripted/constants.pkl", pickle.dumps(()))
    with pytest.raises(VQGANError, match=f"{archive}: a TorchScript archive"):
        load_vqgan(cfg, archive)


def test_checkpoint_missing_a_key(tiny, tmp_path):
    cfg, _, source = tiny
    state = dict(source.state_dict())
    del state["decoder.conv_out.bias"]
    ckpt = tmp_path / "missing.ckpt"
    torch.save(lightning_checkpoint(state), ckpt)
    with pytest.raises(VQGANError) as err:
        load_vqgan(cfg, ckpt)
    message = str(err.value)
    assert str(ckpt) in message and str(cfg) in message
    assert "1 missing: decoder.conv_out.bias" in message


def test_checkpoint_of_another_config(tiny, tmp_path):
    cfg, ckpt, _ = tiny
    bigger = copy.deepcopy(TINY)
    bigger["model"]["params"]["n_embed"] = 32
    bigger["model"]["params"]["ddconfig"]["attn_resolutions"] = []
    other = write_yaml(tmp_path / "bigger.yaml", bigger)
    with pytest.raises(VQGANError) as err:
        load_vqgan(other, ckpt)
    message = str(err.value)
    assert f"checkpoint {ckpt} does not fit config {other}" in message
    assert "quantize.embedding.weight is (16, 4), model wants (32, 4)" in message
    assert "unexpected: encoder.down.1.attn.0.norm.weight" in message


def test_fixture_checkpoint_of_another_fixture_config():
    names = ("taming-f4", "taming-f2-shortcut", "taming-legacy")
    f4, shortcut, legacy = (fixture_dir(name) for name in names)
    with pytest.raises(VQGANError, match="shape mismatch: encoder.down.0.block.0.conv1.weight"):
        load_vqgan(f4 / "config.yaml", shortcut / "model.pth")
    # plain config, Net2Net checkpoint: every autoencoder key sits under first_stage_model.
    with pytest.raises(VQGANError, match="no autoencoder weights.*legacy_cfg=True"):
        load_vqgan(f4 / "config.yaml", legacy / "model.ckpt")
    with pytest.raises(VQGANError, match="no autoencoder weights.*first_stage_model.encoder"):
        load_vqgan(legacy / "config.yaml", f4 / "model.ckpt")


def test_image_size_not_divisible_by_f(tiny):
    cfg, ckpt, _ = tiny
    model = load_vqgan(cfg, ckpt)  # f = 2
    with pytest.raises(VQGANError, match=r"image size 17x16 is not divisible .* f=2"):
        model.encode(torch.zeros(1, 3, 17, 16))
    with pytest.raises(VQGANError, match=r"\(B, 3, H, W\)"):
        model.encode(torch.zeros(1, 1, 16, 16))


def test_bad_indices(tiny):
    cfg, ckpt, _ = tiny
    model = load_vqgan(cfg, ckpt)
    with pytest.raises(VQGANError, match=r"indices must lie in \[0, 16\)"):
        model.decode(torch.full((1, 4, 4), 16))
    with pytest.raises(VQGANError, match="integer tensor"):
        model.decode(torch.zeros(1, 4, 4))
    uint16 = model.decode(torch.full((1, 4, 4), 3, dtype=torch.uint16))  # latent datasets
    assert torch.equal(uint16, model.decode(torch.full((1, 4, 4), 3)))
