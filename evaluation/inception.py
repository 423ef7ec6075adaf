"""torch-fidelity's Inception, from a local weights file only, and the features it gives.

Weights. torch-fidelity's InceptionV3 is the TensorFlow FID Inception (2015-12-05) ported to
PyTorch, the network FID, KID and IS are reported with:

    file   weights-inception-2015-12-05-6726825d.pth
    URL    https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth
    check  sha256sum weights-inception-2015-12-05-6726825d.pth    (the digest begins with 6726825d:
           torch.hub names files by the first 8 hex digits of their SHA-256)

Give it with `--inception-weights FILE` or the environment variable INCEPTION_WEIGHTS=FILE, or put
it where torch-fidelity's own download would land, `<torch hub dir>/checkpoints/` (by default
~/.cache/torch/hub/checkpoints/, or $TORCH_HOME/hub/checkpoints/). Nothing is ever downloaded:
without the file, a one-line error says the above.
"""
import dataclasses
import functools
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from evaluation.names import INCEPTION_FILENAME, WEIGHTS_ENV
from infra.errors import UserError
from infra.files import sha256_of

INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILENAME}"
INCEPTION_SHA256_PREFIX = "6726825d"
FEATURE_LAYERS = ("2048", "logits_unbiased")  # FID/KID/prdc features, IS logits (torch-fidelity's choices)


@dataclasses.dataclass
class Features:
    """Inception features of one image set and where they came from."""
    pool: np.ndarray          # (N, 2048) float32: FID, KID, prdc
    logits: np.ndarray        # (N, 1008) float32, unbiased (no fc bias): IS
    source: str
    weights_sha256: str
    source_sha256: str = None  # set when the features are (or will be) cached

    def __len__(self):
        return len(self.pool)


def resolve_weights(path=None, env=None):
    """The local Inception weights file: `path`, else $INCEPTION_WEIGHTS, else a copy in the torch
    hub cache where torch-fidelity's own download would have put it. Never downloads."""
    env = os.environ if env is None else env
    for given, origin in ((path, "--inception-weights"), (env.get(WEIGHTS_ENV) or None, WEIGHTS_ENV)):
        if given is not None:
            if not Path(given).is_file():
                raise UserError(f"{given}: no such Inception weights file (from {origin})")
            return Path(given)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME
    if cached.is_file():
        return cached
    raise UserError(f"Inception weights not found and never downloaded: get {INCEPTION_URL} (its "
                    f"sha256sum begins with {INCEPTION_SHA256_PREFIX}) and pass --inception-weights FILE, "
                    f"set {WEIGHTS_ENV}=FILE, or put it in {cached.parent}")


def load_inception(weights_path, device="cpu"):
    """torch-fidelity's FeatureExtractorInceptionV3 with pool features and unbiased logits."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    expected = "torch-fidelity's InceptionV3 state dict (the file from " + INCEPTION_URL + ")"
    # weights_only: a plain tensor dict, checked before torch-fidelity loads it again unrestricted
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:  # not a weights file
        raise UserError(f"{weights_path}: not a file of PyTorch tensors (torch.load(weights_only=True) "
                        f"raised {type(e).__name__}); expected {expected}") from None
    if not isinstance(state, dict) or not {"Conv2d_1a_3x3.conv.weight", "fc.weight"} <= set(state):
        raise UserError(f"{weights_path}: not an Inception state dict; expected {expected}")
    try:
        model = FeatureExtractorInceptionV3("inception-v3-compat", list(FEATURE_LAYERS),
                                            feature_extractor_weights_path=str(weights_path))
    except RuntimeError as e:  # load_state_dict: missing/unexpected keys or shapes
        reason = str(e).strip().splitlines()[0]
        raise UserError(f"{weights_path}: not an Inception state dict ({reason}); expected {expected}") from None
    # channels-last: the same features (to 1e-5) 1.5x faster on a CPU core, where FID spends its time
    return model.to(device, memory_format=torch.channels_last)


def extract_features(images, model, batch_size, device):
    """(pool (N, 2048), logits (N, 1008)) float32 of an image set through the Inception model."""
    pool, logits = [], []
    bar = tqdm(total=len(images), desc="Inception features", unit="image", leave=False, disable=None)
    with torch.no_grad(), bar:
        for batch in images.batches(batch_size):
            p, lg = model(batch.to(device))
            pool.append(p.float().cpu())
            logits.append(lg.float().cpu())
            bar.update(len(batch))
    return torch.cat(pool).numpy(), torch.cat(logits).numpy()


class Inception:
    """The Inception feature extractor of one run; weights are resolved and loaded on first use,
    so comparing two statistics files needs no weights at all."""

    def __init__(self, weights=None, device="cpu", batch_size=64, env=None):
        if batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {batch_size}")
        self._weights, self._env = weights, env
        self.device, self.batch_size = device, batch_size

    @functools.cached_property
    def weights_path(self):
        return resolve_weights(self._weights, self._env)

    @functools.cached_property
    def weights_sha256(self):
        return sha256_of(self.weights_path)

    @functools.cached_property
    def model(self):
        return load_inception(self.weights_path, self.device)

    def features(self, images, source_sha256=None):
        pool, logits = extract_features(images, self.model, self.batch_size, self.device)
        return Features(pool, logits, str(images.path), self.weights_sha256, source_sha256)
