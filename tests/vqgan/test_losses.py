"""The VQ-GAN objective's pieces on hand-made inputs: L1, hinge / vanilla GAN losses, the clamped
adaptive weight, the generator and discriminator totals, LPIPS, the PatchGAN layout, DiffAugment."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from tests.helpers import vqgan_fixture
from vqgan.diffaug import Augmentation, DiffAugment, translate
from vqgan.discriminator import PatchDiscriminator
from vqgan.errors import VQGANError
from vqgan.losses import (ADAPTIVE_WEIGHT_DELTA, VQGANLoss, adaptive_weight, generator_loss, hinge_d_loss,
                          l1_loss, vanilla_d_loss)
from vqgan.lpips import LPIPS, load_lpips
from vqgan.training_config import LossConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# --- the loss terms ------------------------------------------------------------------------

def test_l1_is_the_absolute_error_per_pixel():
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    recon = t(0.5, -1.0, 0.0, 2.0).reshape(1, 1, 2, 2)
    assert torch.equal(l1_loss(x, recon), t(0.5, 1.0, 0.0, 2.0).reshape(1, 1, 2, 2))


def test_hinge_loss_on_hand_made_logits():
    real, fake = t(2.0, 0.5, -1.0), t(-2.0, 0.0, 1.0)
    # relu(1 - real) = [0, 0.5, 2] (mean 5/6); relu(1 + fake) = [0, 1, 2] (mean 1)
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    # beyond the margins there is nothing left to learn
    assert hinge_d_loss(t(1.0, 3.0), t(-1.0, -5.0)).item() == 0.0


def test_vanilla_loss_is_binary_cross_entropy():
    real, fake = t(2.0, -1.0), t(0.0, 3.0)
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected = 0.5 * ((softplus(-2.0) + softplus(1.0)) / 2 + (softplus(0.0) + softplus(3.0)) / 2)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expected)


def test_generator_loss_is_minus_the_mean_fake_logit():
    assert generator_loss(t(1.0, -3.0, 0.5)).item() == pytest.approx(0.5)


def linear_losses(a, b):
    """nll = <w, a>, L_G = <w, b> for a leaf weight w: their gradients are a and b exactly."""
    w = torch.ones(len(a), dtype=torch.float64, requires_grad=True)
    return w, (w * a).sum(), (w * b).sum()


def test_adaptive_weight_is_the_gradient_norm_ratio():
    a, b = t(3.0, 4.0), t(0.0, 10.0)  # norms 5 and 10
    w, nll, g = linear_losses(a, b)
    weight = adaptive_weight(nll, g, w, max_weight=1e4)
    assert weight.item() == pytest.approx(5 / (10 + ADAPTIVE_WEIGHT_DELTA), rel=1e-12)
    assert not weight.requires_grad  # a coefficient, not a path for gradients


def test_adaptive_weight_is_clamped_at_the_configured_maximum():
    a, b = t(3.0, 4.0), t(0.0, 1e-3)  # unclamped: 5 / 0.0011 = 4545
    w, nll, g = linear_losses(a, b)
    assert adaptive_weight(nll, g, w, max_weight=1e4).item() == pytest.approx(5 / 1.1e-3)
    w, nll, g = linear_losses(a, b)
    assert adaptive_weight(nll, g, w, max_weight=2.5).item() == 2.5
    w, nll, g = linear_losses(a, b)
    assert adaptive_weight(nll, g, w, max_weight=0.0).item() == 0.0


class ConstantDiscriminator(nn.Module):
    """Logits = the mean of each image times a learnable scale: simple enough to hand-check."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, x):
        return self.scale * x.mean(dim=(1, 2, 3), keepdim=True)


class FixedPerceptual(nn.Module):
    def forward(self, x, y):
        return torch.full((x.shape[0], 1, 1, 1), 0.3, dtype=x.dtype)


def make_loss(perceptual=None, **params):
    cfg = LossConfig(**{"disc_start": 10, **params})
    loss = VQGANLoss(cfg, adaptive_weight_max=1e4, perceptual=perceptual).double()
    loss.discriminator = ConstantDiscriminator()
    return loss


def decoder_output(x_shape, seed=0):
    """recon = w * base with a leaf `w`: stands in for the decoder's last layer."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(x_shape, generator=g, dtype=torch.float64)
    w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    return w, w * base


def test_generator_total_before_disc_start_is_reconstruction_plus_codebook():
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    w, recon = decoder_output(x.shape)
    loss = make_loss(FixedPerceptual(), codebook_weight=0.5, pixelloss_weight=2.0, perceptual_weight=0.1)
    terms = loss.generator_terms(x, recon, torch.tensor(0.2, dtype=torch.float64), step=9, last_layer=w)
    nll = 2.0 * (x - recon).abs().mean() + 0.1 * 0.3  # LPIPS adds per image, i.e. per pixel
    assert terms.total.item() == pytest.approx((nll + 0.5 * 0.2).item(), rel=1e-12)
    assert "g_loss" not in terms.logs and "d_weight" not in terms.logs


def test_generator_total_after_disc_start_adds_the_weighted_gan_term():
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    w, recon = decoder_output(x.shape)
    loss = make_loss(codebook_weight=1.0, disc_weight=0.8, disc_factor=0.5, perceptual_weight=0.0)
    q = torch.tensor(0.2, dtype=torch.float64)
    terms = loss.generator_terms(x, recon, q, step=10, last_layer=w)

    # by hand: nll = mean|x - w base|, L_G = -scale * mean(w base), both linear-ish in w
    base = recon.detach() / 0.7
    nll = (x - recon.detach()).abs().mean()
    g = -2.0 * recon.detach().mean()
    d_nll = (-torch.sign(x - recon.detach()) * base).mean()
    d_g = -2.0 * base.mean()
    lam = d_nll.abs() / (d_g.abs() + ADAPTIVE_WEIGHT_DELTA)
    expected = nll + lam * 0.8 * 0.5 * g + q
    assert terms.total.item() == pytest.approx(expected.item(), rel=1e-10)
    assert terms.logs["d_weight"].item() == pytest.approx(lam.item(), rel=1e-10)


def test_discriminator_loss_is_off_before_disc_start_and_hinge_after():
    x, recon = torch.rand(2, 3, 4, 4, dtype=torch.float64), torch.rand(2, 3, 4, 4, dtype=torch.float64)
    loss = make_loss(disc_factor=0.5)
    assert loss.discriminator_terms(x, recon, step=9).total.item() == 0.0
    real = 2.0 * x.mean(dim=(1, 2, 3))
    fake = 2.0 * recon.mean(dim=(1, 2, 3))
    expected = 0.5 * hinge_d_loss(real, fake)
    assert loss.discriminator_terms(x, recon, step=10).total.item() == pytest.approx(expected.item())


# --- the PatchGAN and LPIPS in taming's key layout -----------------------------------------

def fixture_keys(prefix):
    """(key without prefix, shape) of every keys.txt row under `prefix`, in file order."""
    rows = []
    for line in (vqgan_fixture("taming-f4") / "keys.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _dtype, _role = line.split("\t")
        if key.startswith(prefix):
            rows.append((key[len(prefix):], tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


def test_discriminator_keys_and_shapes_are_tamings():
    d = PatchDiscriminator(in_channels=3, ndf=64, num_layers=3)  # taming's defaults
    assert [(k, tuple(v.shape)) for k, v in d.state_dict().items()] == fixture_keys("loss.discriminator.")


def test_lpips_keys_and_shapes_are_tamings():
    with torch.device("meta"):
        model = LPIPS()
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == fixture_keys("loss.perceptual_loss.")


@pytest.mark.parametrize("num_layers,size", [(0, 8), (1, 16), (2, 32), (3, 32), (3, 40)])
def test_discriminator_output_size(num_layers, size):
    d = PatchDiscriminator(3, 8, num_layers)
    out = d(torch.zeros(1, 3, size, size))
    assert out.shape == (1, 1, *(2 * [PatchDiscriminator.output_size(size, num_layers)]))


def reference_lpips(model, x, y):
    """LPIPS in float64 from torchvision's own VGG16 feature stack, loaded with our weights."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"]).double()
    ours = model.state_dict()
    for i, layer in enumerate(features):
        if isinstance(layer, nn.Conv2d):
            slice_name = next(k for k in ours if k.startswith("net.slice") and k.endswith(f".{i}.weight"))
            layer.weight.data = ours[slice_name].double()
            layer.bias.data = ours[slice_name.replace("weight", "bias")].double()
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64)[None, :, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64)[None, :, None, None]
    taps = {3, 8, 15, 22, 29}  # the ReLU before each pool, and the last one
    total = 0.0
    a, b = (x.double() - shift) / scale, (y.double() - shift) / scale
    k = 0
    for i, layer in enumerate(features[:30]):
        a, b = layer(a), layer(b)
        if i in taps:
            na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            lin = ours[f"lin{k}.model.1.weight"].double()[0, :, 0, 0]  # (C,)
            total = total + torch.einsum("bchw,c->b", (na - nb) ** 2, lin) / (a.shape[2] * a.shape[3])
            k += 1
    return total


def random_lpips(seed=0):
    torch.manual_seed(seed)
    model = LPIPS()
    for i in range(5):  # LPIPS heads are non-negative
        getattr(model, f"lin{i}").model[1].weight.data.uniform_(0, 1)
    return model


def test_lpips_matches_a_float64_reference_and_is_a_distance():
    model = random_lpips()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    ours = model(x, y)
    assert ours.shape == (2, 1, 1, 1)
    torch.testing.assert_close(ours.flatten().double(), reference_lpips(model, x, y), rtol=1e-4, atol=1e-6)
    assert torch.equal(model(x, x), torch.zeros(2, 1, 1, 1))
    model.train()  # the loop calls .train(); LPIPS must stay a fixed function (no dropout)
    assert not model.training and torch.equal(model(x, y), ours)


def test_load_lpips_from_a_state_dict_or_a_taming_checkpoint(tmp_path):
    model = random_lpips(seed=2)
    state = model.state_dict()
    torch.save(state, tmp_path / "lpips.pth")
    torch.save({"state_dict": {**{f"loss.perceptual_loss.{k}": v for k, v in state.items()},
                               "encoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "taming.ckpt")
    x, y = torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1
    for name in ("lpips.pth", "taming.ckpt"):
        loaded = load_lpips(tmp_path / name)
        assert torch.equal(loaded(x, y), model(x, y))
        assert not any(p.requires_grad for p in loaded.parameters())


def test_load_lpips_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(VQGANError, match="not found"):
        load_lpips(tmp_path / "nope.pth")
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, tmp_path / "heads-only.pth")
    with pytest.raises(VQGANError, match=r"heads-only.pth do not fit: \d+ missing: scaling_layer"):
        load_lpips(tmp_path / "heads-only.pth")


# --- DiffAugment -------------------------------------------------------------------------------

def reference_augment(x, aug):
    """Per image, in float64 numpy: brightness, saturation, contrast, then a zero-filled shift."""
    out = []
    for i, img in enumerate(x.double().numpy()):
        img = img + aug.brightness[i].item()
        gray = img.mean(axis=0, keepdims=True)
        img = (img - gray) * aug.saturation[i].item() + gray
        mean = img.mean()
        img = (img - mean) * aug.contrast[i].item() + mean
        dy, dx = (int(v) for v in aug.shift[i])
        shifted = np.zeros_like(img)
        _, h, w = img.shape
        for y in range(h):
            for x_ in range(w):
                sy, sx = y - dy, x_ - dx
                if 0 <= sy < h and 0 <= sx < w:
                    shifted[:, y, x_] = img[:, sy, sx]
        out.append(shifted)
    return torch.from_numpy(np.stack(out))


def test_diffaug_matches_a_per_image_reference():
    augment = DiffAugment(translation=0.25)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    aug = augment.sample(6, 8, 8, generator=g)
    assert aug.shift.abs().max() <= 2 and aug.shift.abs().max() > 0
    assert (aug.brightness.abs() <= 0.5).all() and ((aug.saturation >= 0) & (aug.saturation < 2)).all()
    assert ((aug.contrast >= 0.5) & (aug.contrast < 1.5)).all()
    torch.testing.assert_close(augment.apply(x, aug), reference_augment(x, aug), rtol=0, atol=1e-12)


def test_diffaug_is_differentiable():
    augment = DiffAugment(translation=0.25)
    g = torch.Generator().manual_seed(3)
    aug = augment.sample(2, 6, 6, generator=g)
    x = (torch.rand(2, 3, 6, 6, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: augment.apply(v, aug), (x,))


def test_diffaug_transforms_real_and_fake_identically():
    # one draw for the step; real[i] and fake[i] get the same brightness, colour and shift: an
    # image pair that differs in one pixel still differs in exactly one (moved) pixel
    augment = DiffAugment(color=False, translation=0.25)
    aug = augment.sample(4, 8, 8, generator=torch.Generator().manual_seed(5))
    real = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    fake = real.clone()
    fake[:, :, 4, 4] += 1.0
    diff = augment.apply(fake, aug) - augment.apply(real, aug)
    for i, (dy, dx) in enumerate(aug.shift.tolist()):
        expected = torch.zeros(3, 8, 8, dtype=torch.float64)
        expected[:, 4 + dy, 4 + dx] = 1.0
        torch.testing.assert_close(diff[i], expected)
    # and the training loss hands the one draw to both discriminator calls
    seen = []
    loss = make_loss()
    loss.augment = DiffAugment()
    loss.augment.apply = lambda x, a: seen.append(a) or x
    loss.discriminator_terms(real, fake, step=10, aug=aug)
    assert len(seen) == 2 and seen[0] is aug and seen[1] is aug


def test_translate_shifts_and_fills_with_zeros():
    x = torch.arange(1, 10, dtype=torch.float64).reshape(1, 1, 3, 3)
    out = translate(x, torch.tensor([[1, -1]]))  # down one row, left one column
    assert out[0, 0].tolist() == [[0, 0, 0], [2, 3, 0], [5, 6, 0]]


def test_no_augmentation_without_a_draw():
    loss = make_loss()
    loss.augment = DiffAugment()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    assert torch.equal(loss._discriminate(x, None), loss.discriminator(x))
    assert isinstance(loss.augment.sample(2, 4, 4), Augmentation)
