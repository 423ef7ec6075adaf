"""The Inception network: weights from a local file only (never downloaded), one-line errors for
missing or wrong weights, and agreement with torch-fidelity itself on a random-weights Inception."""
import json
from unittest import mock

import pytest
import torch

from evaluation import inception
from tests.evaluation.image_files import write_images
from tests.helpers import assert_user_error, run_main


def random_inception_weights(path, seed=0):
    """Random weights in the layout of torch-fidelity's FeatureExtractorInceptionV3 state dict
    (He-scaled convolutions, so activations neither vanish nor explode through 90 layers)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    # build the module without any weights file: its constructor would load (or download) one
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        module = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if key.endswith("conv.weight") or key == "fc.weight":
            scale = (2 / value[0].numel()) ** 0.5 * (20 if key == "fc.weight" else 1)  # spread logits: IS > 1
            state[key] = torch.randn(value.shape, generator=g) * scale
        else:
            state[key] = value.clone()
    torch.save(state, path)
    return path


@pytest.fixture
def no_download(monkeypatch):
    """Fail loudly if anything tries torch-fidelity's download."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download the Inception weights")

    monkeypatch.setattr(fe, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def test_missing_weights_say_where_to_get_them_and_never_download(tmp_path, monkeypatch, no_download):
    write_images(tmp_path / "a", 8)
    write_images(tmp_path / "b", 8, seed=1)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    proc = run_main("evaluate.py", tmp_path / "a", tmp_path / "b")
    assert_user_error(proc, inception.INCEPTION_URL, "--inception-weights", inception.WEIGHTS_ENV,
                      inception.INCEPTION_SHA256_PREFIX)

    monkeypatch.setenv(inception.WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    assert_user_error(run_main("evaluate.py", tmp_path / "a", tmp_path / "b"), "missing.pth", inception.WEIGHTS_ENV)


@pytest.mark.parametrize("content", ["garbage", "other state dict"])
def test_weights_that_are_not_an_inception_state_dict_are_a_one_line_error(tmp_path, content, no_download):
    write_images(tmp_path / "a", 8)
    write_images(tmp_path / "b", 8, seed=1)
    weights = tmp_path / "weights.pth"
    if content == "garbage":
        weights.write_bytes(b"\x00not a torch file" * 10)
    else:
        torch.save({"layer.weight": torch.zeros(3, 3)}, weights)
    proc = run_main("evaluate.py", tmp_path / "a", tmp_path / "b", "--inception-weights", weights)
    assert_user_error(proc, "weights.pth", "Inception")


@pytest.mark.slow
def test_evaluate_agrees_with_torch_fidelity_on_the_same_files(tmp_path, no_download):
    import torch_fidelity

    weights = random_inception_weights(tmp_path / "random-inception.pth")
    write_images(tmp_path / "samples", 8, seed=0)
    write_images(tmp_path / "reference", 8, seed=1, brightness=40)
    out = tmp_path / "folder.json"
    proc = run_main("evaluate.py", tmp_path / "samples", tmp_path / "reference", "--inception-weights", weights,
                    "--device", "cpu", "--json", out)
    assert proc.returncode == 0, proc.stderr
    ours = json.loads(out.read_text())
    assert "KID subset size clamped from 1000 to 8" in proc.stdout and "IS over 4 splits" in proc.stdout

    theirs = torch_fidelity.calculate_metrics(
        input1=str(tmp_path / "samples"), input2=str(tmp_path / "reference"), cuda=False, isc=True, fid=True,
        kid=True, feature_extractor_weights_path=str(weights), kid_subset_size=8, isc_splits=4, cache=False,
        verbose=False, save_cpu_ram=True)
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)
    # our extractor runs channels-last (features within 1e-5 of torch-fidelity's layout); KID, a
    # difference of kernel means near 0, carries that as a relative 4e-5 on these 8 images
    assert ours["kid_mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=2e-4)
    # its spread over subsets of 8 images is float32 rounding (about 1e-7) in either layout
    assert ours["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-4, abs=1e-7)
    assert ours["isc_mean"] == pytest.approx(theirs["inception_score_mean"], rel=1e-5)
    assert ours["isc_std"] == pytest.approx(theirs["inception_score_std"], rel=1e-4, abs=1e-9)
    assert ours["isc_mean"] > 1.01 and ours["fid"] > 0  # the random network tells images apart
    for key in ("precision", "recall", "density", "coverage"):
        assert 0 <= ours[key] <= (5 if key == "density" else 1)
