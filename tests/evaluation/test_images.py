"""Image metrics: the ADM .npz layout, statistics files, one-line errors, and agreement with
torch-fidelity itself on a random-weights Inception (offline: no file is downloaded)."""
import json
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import images
from infra.files import sha256_of
from tests.helpers import assert_user_error, run_main


def write_images(folder, n, size=32, seed=0, brightness=0):
    """n random RGB PNGs of size x size in `folder`, each a colour of its own plus noise (so even a
    random network tells them apart); returns their (n, size, size, 3) uint8 array."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 220, size=(n, 1, 1, 3))
    noise = rng.integers(-20, 20, size=(n, size, size, 3))
    arrays = np.clip(colours + noise + brightness, 0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i:03d}.png")
    return arrays


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


# ---------------------------------------------------------------------------------------------
# ADM layout


def test_adm_npz_round_trips_images_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, size=(5, 7, 9, 3)).astype(np.uint8)
    labels = rng.integers(0, 10, size=5)
    path = tmp_path / "samples.npz"
    images.write_adm_npz(path, arrays, labels)

    back, back_labels = images.read_adm_npz(path)
    np.testing.assert_array_equal(back, arrays)
    np.testing.assert_array_equal(back_labels, labels)
    with np.load(path) as raw:  # what ADM's evaluator and other tools read
        assert sorted(raw.files) == ["arr_0", "arr_1"] and raw["arr_0"].dtype == np.uint8
    streamed = torch.cat(list(images.AdmNpz(path).batches(2)))  # (N, 3, H, W), in batches of 2
    np.testing.assert_array_equal(streamed.permute(0, 2, 3, 1).numpy(), arrays)

    images.write_adm_npz(tmp_path / "unlabelled.npz", arrays)
    assert images.read_adm_npz(tmp_path / "unlabelled.npz")[1] is None


def test_folder_batches_are_the_images_as_uint8(tmp_path):
    arrays = write_images(tmp_path / "set", 5, size=8)
    folder = images.ImageFolder(tmp_path / "set")
    batches = list(folder.batches(2))
    assert [len(b) for b in batches] == [2, 2, 1] and batches[0].dtype == torch.uint8
    np.testing.assert_array_equal(torch.cat(batches).permute(0, 2, 3, 1).numpy(), arrays)


@pytest.mark.parametrize("arrays, fragment", [
    ({"arr_0": np.zeros((4, 8, 8, 3), np.float32)}, "float32 4x8x8x3"),
    ({"arr_0": np.zeros((4, 8, 8), np.uint8)}, "uint8 4x8x8"),
    ({"images": np.zeros((4, 8, 8, 3), np.uint8)}, "no arr_0"),
    ({"arr_0": np.zeros((0, 8, 8, 3), np.uint8)}, "no images"),
])
def test_npz_of_the_wrong_layout_is_a_one_line_error(tmp_path, arrays, fragment):
    write_images(tmp_path / "ref", 8)
    np.savez(tmp_path / "bad.npz", **arrays)
    assert_user_error(run_main("evaluate.py", tmp_path / "bad.npz", tmp_path / "ref"), "bad.npz", fragment)


def test_not_an_npz_is_a_one_line_error(tmp_path):
    write_images(tmp_path / "ref", 8)
    (tmp_path / "bad.npz").write_bytes(b"not a zip archive")
    assert_user_error(run_main("evaluate.py", tmp_path / "bad.npz", tmp_path / "ref"),
                      "bad.npz", "not a readable .npz")


def test_mixed_image_sizes_and_empty_folders_are_one_line_errors(tmp_path):
    write_images(tmp_path / "ref", 8)
    write_images(tmp_path / "mixed", 3, size=32)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "mixed" / "small.png")
    assert_user_error(run_main("evaluate.py", tmp_path / "mixed", tmp_path / "ref"),
                      "mixed", "different sizes", "16x16", "32x32")
    (tmp_path / "empty").mkdir()
    assert_user_error(run_main("evaluate.py", tmp_path / "empty", tmp_path / "ref"), "empty", "no images")
    assert_user_error(run_main("evaluate.py", tmp_path / "nowhere", tmp_path / "ref"), "nowhere")


# ---------------------------------------------------------------------------------------------
# Weights


def test_missing_weights_say_where_to_get_them_and_never_download(tmp_path, monkeypatch, no_download):
    write_images(tmp_path / "a", 8)
    write_images(tmp_path / "b", 8, seed=1)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache
    monkeypatch.delenv(images.WEIGHTS_ENV, raising=False)
    proc = run_main("evaluate.py", tmp_path / "a", tmp_path / "b")
    assert_user_error(proc, images.INCEPTION_URL, "--inception-weights", images.WEIGHTS_ENV,
                      images.INCEPTION_SHA256_PREFIX)

    monkeypatch.setenv(images.WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    assert_user_error(run_main("evaluate.py", tmp_path / "a", tmp_path / "b"), "missing.pth", images.WEIGHTS_ENV)


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


# ---------------------------------------------------------------------------------------------
# Statistics files


@pytest.fixture
def fake_inception(monkeypatch):
    """Replace the network by cheap features of the pixels and record each extraction's source:
    what is tested here is which sets get extracted, not Inception."""
    calls = []

    def extract(image_set, model, batch_size, device):
        calls.append(image_set.path.name)
        x = torch.cat(list(image_set.batches(batch_size))).float()  # (N, 3, H, W)
        pool = x.flatten(1)[:, ::131][:, :24]  # (N, 24) pixels
        return pool.numpy(), x.mean((2, 3)).numpy()  # logits (N, 3)

    monkeypatch.setattr(images, "load_inception", lambda path, device: None)
    monkeypatch.setattr(images, "extract_features", extract)
    return calls


def test_reference_statistics_are_reused_and_invalidated_by_the_images_and_the_weights(tmp_path, fake_inception):
    write_images(tmp_path / "samples", 8)
    write_images(tmp_path / "reference", 8, seed=1, brightness=30)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights one")
    stats = tmp_path / "reference-stats.npz"

    def run(tag, *extra):
        out = tmp_path / f"{tag}.json"
        proc = run_main("evaluate.py", *extra, "--inception-weights", weights, "--json", out)
        assert proc.returncode == 0, proc.stderr
        return json.loads(out.read_text()), proc.stdout

    first, _ = run("first", tmp_path / "samples", tmp_path / "reference", "--reference-stats", stats)
    assert fake_inception == ["samples", "reference"] and images.is_stats_file(stats)
    assert first["n_samples"] == first["n_reference"] == 8 and first["fid"] > 0

    again, stdout = run("again", tmp_path / "samples", tmp_path / "reference", "--reference-stats", stats)
    assert fake_inception[2:] == ["samples"] and "reusing cached statistics" in stdout
    assert again == first

    direct, _ = run("direct", tmp_path / "samples", stats)  # the statistics file as REFERENCE
    assert fake_inception[3:] == ["samples"]
    assert {k: direct[k] for k in images.JSON_KEYS} == {k: first[k] for k in images.JSON_KEYS}

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "reference" / "000.png")
    changed, stdout = run("changed", tmp_path / "samples", tmp_path / "reference", "--reference-stats", stats)
    assert fake_inception[4:] == ["samples", "reference"] and "stale (the images changed)" in stdout
    assert changed["fid"] != first["fid"]

    weights.write_bytes(b"weights two")
    _, stdout = run("reweighted", tmp_path / "samples", tmp_path / "reference", "--reference-stats", stats)
    assert fake_inception[6:] == ["samples", "reference"] and "stale (the Inception weights changed)" in stdout


def test_an_adm_npz_scores_like_the_folder_of_its_images(tmp_path, fake_inception):
    arrays = write_images(tmp_path / "samples", 8)
    write_images(tmp_path / "reference", 8, seed=1, brightness=30)
    images.write_adm_npz(tmp_path / "samples.npz", arrays)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    results = []
    for samples in ("samples", "samples.npz"):
        out = tmp_path / f"{samples}.json"
        proc = run_main("evaluate.py", tmp_path / samples, tmp_path / "reference", "--inception-weights", weights,
                        "--json", out)
        assert proc.returncode == 0, proc.stderr
        results.append({k: json.loads(out.read_text())[k] for k in images.JSON_KEYS})
    assert results[0] == results[1] and results[0]["fid"] > 0


def test_save_stats_writes_a_reference_once(tmp_path, fake_inception):
    write_images(tmp_path / "reference", 8, seed=1)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    stats = tmp_path / "ref.npz"
    proc = run_main("evaluate.py", tmp_path / "reference", "--save-stats", stats, "--inception-weights", weights)
    assert proc.returncode == 0, proc.stderr
    saved = images.load_stats(stats)
    assert len(saved) == 8 and saved.weights_sha256 == sha256_of(weights)
    assert saved.source_sha256 == images.ImageFolder(tmp_path / "reference").sha256()
    with np.load(stats) as raw:  # mean and covariance for other tools
        np.testing.assert_allclose(raw["mu"], saved.pool.mean(0), rtol=1e-5)
        np.testing.assert_allclose(raw["sigma"], np.cov(saved.pool.astype(np.float64), rowvar=False), rtol=1e-6)


def test_statistics_of_other_weights_are_refused(tmp_path, fake_inception):
    write_images(tmp_path / "samples", 8)
    write_images(tmp_path / "reference", 8, seed=1)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights one")
    stats = tmp_path / "ref.npz"
    run_main("evaluate.py", tmp_path / "reference", "--save-stats", stats, "--inception-weights", weights)
    weights.write_bytes(b"weights two")
    assert_user_error(run_main("evaluate.py", tmp_path / "samples", stats, "--inception-weights", weights),
                      "ref.npz", "other Inception weights")


# ---------------------------------------------------------------------------------------------
# The real path: torch-fidelity's Inception on random weights


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
    assert ours["kid_mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-5)
    assert ours["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-4, abs=1e-9)
    assert ours["isc_mean"] == pytest.approx(theirs["inception_score_mean"], rel=1e-5)
    assert ours["isc_std"] == pytest.approx(theirs["inception_score_std"], rel=1e-4, abs=1e-9)
    assert ours["isc_mean"] > 1.01 and ours["fid"] > 0  # the random network tells images apart
    for key in ("precision", "recall", "density", "coverage"):
        assert 0 <= ours[key] <= (5 if key == "density" else 1)

