"""Inception features of image sets through torch-fidelity, from a local weights file only.

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

Image sets. A folder of images (searched recursively; every image must have one size, no
resizing is done here: torch-fidelity resizes each image to 299x299 with TF1's bilinear
interpolation), an .npz in the ADM layout (`arr_0`: uint8 N x H x W x 3, optional `arr_1`: int
labels), or a statistics file this module wrote.

Statistics files (`.npz`, `format` = "sundae-inception-stats", version 1) hold a set's pool
features (N, 2048) float32 and unbiased logits (N, 1008) float32, torch-fidelity's FID mean and
covariance, the SHA-256 of the source images (file names and bytes of a folder, the bytes of an
.npz) and of the Inception weights. A cached reference is reused only while both digests match.
"""
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evaluation import metrics
from infra.errors import UserError
from infra.files import atomic_path, sha256_of
from infra.images import UNREADABLE, list_images, open_rgb

INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILENAME}"
INCEPTION_SHA256_PREFIX = "6726825d"
WEIGHTS_ENV = "INCEPTION_WEIGHTS"
FEATURE_LAYERS = ("2048", "logits_unbiased")  # FID/KID/prdc features, IS logits (torch-fidelity's choices)

STATS_FORMAT = "sundae-inception-stats"
STATS_VERSION = 1
ADM_LAYOUT = "the ADM layout: arr_0 uint8 N x H x W x 3 images, optional arr_1 labels"


class ImageArray:
    """Images already in memory (uint8 (N, 3, H, W)) as an image set, e.g. samples drawn during
    training."""

    def __init__(self, images, path="<samples in memory>"):
        self.images, self.path = images, path

    def __len__(self):
        return len(self.images)

    def batches(self, batch_size):
        yield from self.images.split(batch_size)


class ImageFolder:
    """Every image under a directory (recursively, sorted), all of one size, as RGB."""

    def __init__(self, path):
        self.path = Path(path)
        self.files = list_images(self.path)  # UserError when empty
        sizes = {}
        for f in self.files:
            try:
                with Image.open(f) as im:  # reads the header only
                    sizes.setdefault(im.size, f)
            except UNREADABLE as e:
                raise UserError(f"{f}: unreadable image ({e})") from None
        if len(sizes) > 1:
            (s1, f1), (s2, f2) = list(sizes.items())[:2]
            raise UserError(f"{self.path}: images of different sizes ({f1.name} is {s1[0]}x{s1[1]}, "
                            f"{f2.name} is {s2[0]}x{s2[1]}); resize them to one size first")

    def __len__(self):
        return len(self.files)

    def sha256(self):
        digest = hashlib.sha256()
        for f in self.files:
            digest.update(f"{f.relative_to(self.path)}\0{f.stat().st_size}\0".encode())
            digest.update(f.read_bytes())
        return digest.hexdigest()

    def batches(self, batch_size, workers=2):
        """uint8 (B, 3, H, W) batches; PNG/JPEG decoding runs in threads (PIL releases the GIL)."""
        def load(f):
            return torch.from_numpy(np.array(open_rgb(f))).permute(2, 0, 1)  # (3, H, W) uint8

        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            for start in range(0, len(self.files), batch_size):
                yield torch.stack(list(pool.map(load, self.files[start:start + batch_size])))


def _adm_header(path, member):
    """(shape, dtype) of an .npy member of an .npz, read from its header; UserError when not ADM."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise UserError(f"{path}: arr_0 has .npy format version {version}; expected 1.0 or 2.0")
    if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3:
        raise UserError(f"{path}: arr_0 is {dtype} {'x'.join(map(str, shape))}; expected {ADM_LAYOUT}")
    if fortran:
        raise UserError(f"{path}: arr_0 is stored in Fortran order; save it C-ordered (np.savez)")
    if shape[0] == 0:
        raise UserError(f"{path}: arr_0 holds no images")
    return shape, dtype


class AdmNpz:
    """The images of an ADM-layout .npz, streamed from the file batch by batch: a 50k x 256 x 256
    reference batch is never loaded whole (as ADM's own evaluator reads it)."""

    def __init__(self, path):
        self.path = Path(path)
        with self._open() as member:
            self.shape, _ = _adm_header(self.path, member)

    @contextlib.contextmanager
    def _open(self):
        """The arr_0.npy member of the archive, as a file positioned at its start."""
        try:
            archive = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise UserError(f"{self.path}: not a readable .npz ({e}); expected {ADM_LAYOUT}") from None
        with archive:
            if "arr_0.npy" not in archive.namelist():
                names = ", ".join(n.removesuffix(".npy") for n in archive.namelist()) or "nothing"
                raise UserError(f"{self.path}: no arr_0 (holds {names}); expected {ADM_LAYOUT}")
            with archive.open("arr_0.npy") as member:
                yield member

    def __len__(self):
        return self.shape[0]

    def sha256(self):
        return sha256_of(self.path)

    def batches(self, batch_size, workers=None):
        n, h, w, c = self.shape
        with self._open() as member:
            _adm_header(self.path, member)
            for start in range(0, n, batch_size):
                rows = min(batch_size, n - start)
                data = member.read(rows * h * w * c)
                if len(data) != rows * h * w * c:
                    raise UserError(f"{self.path}: arr_0 is truncated ({start + len(data) // (h * w * c)} "
                                    f"of {n} images)")
                batch = np.frombuffer(data, np.uint8).reshape(rows, h, w, c)
                yield torch.from_numpy(batch.copy()).permute(0, 3, 1, 2)


def write_adm_npz(path, images, labels=None):
    """Write uint8 (N, H, W, 3) images (and (N,) labels as arr_1) in the ADM layout, atomically."""
    images = np.asarray(images)
    write_adm_npz_batches(path, images.shape, [images], labels)


def write_adm_npz_batches(path, shape, batches, labels=None):
    """The ADM layout written one uint8 (B, H, W, 3) batch at a time, so 50k images at 256x256
    (10 GB) never need to sit in memory: each array is stored uncompressed in the zip, as
    np.savez does, and np.load reads the result as usual. Written atomically."""
    count, height, width, channels = shape
    if channels != 3 or len(shape) != 4:
        raise UserError(f"{path}: images are {tuple(shape)}; expected {ADM_LAYOUT}")
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (count,):
            raise UserError(f"{path}: {labels.shape} labels for {count} images")
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("arr_0.npy", "w", force_zip64=True) as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": (count, height, width, 3)}
            np.lib.format.write_array_header_2_0(f, header)
            written = 0
            for batch in batches:
                batch = np.ascontiguousarray(batch)
                if batch.dtype != np.uint8 or batch.shape[1:] != (height, width, 3):
                    raise UserError(f"{path}: a batch of {batch.dtype} {batch.shape}; expected {ADM_LAYOUT}")
                f.write(batch.tobytes())
                written += len(batch)
            if written != count:
                raise UserError(f"{path}: {written} images written, {count} announced")
        if labels is not None:
            with archive.open("arr_1.npy", "w") as f:
                np.lib.format.write_array(f, labels)


def read_adm_npz(path):
    """(images uint8 (N, H, W, 3), labels (N,) or None) of an ADM-layout .npz, checked."""
    source = AdmNpz(path)
    with np.load(path) as data:
        images = data["arr_0"]
        labels = data["arr_1"] if "arr_1" in data.files else None
    if labels is not None and labels.shape != (len(source),):
        raise UserError(f"{path}: arr_1 has shape {labels.shape}; expected ({len(source)},) labels")
    return images, labels


# ---------------------------------------------------------------------------------------------
# Features and statistics files


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


def is_stats_file(path):
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return "format.npy" in archive.namelist()


def save_stats(path, features):
    """Write a statistics file (features, FID mean/covariance, digests), atomically."""
    stats = metrics.fid_statistics(features.pool)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, format=STATS_FORMAT, version=STATS_VERSION, source=features.source,
                 source_sha256=features.source_sha256, weights_sha256=features.weights_sha256,
                 pool=features.pool, logits=features.logits, mu=stats["mu"], sigma=stats["sigma"])


def load_stats(path):
    """The Features of a statistics file; UserError when it is not one."""
    try:
        with np.load(path) as data:
            if "format" not in data.files or str(data["format"]) != STATS_FORMAT:
                raise UserError(f"{path}: not a statistics file of this tool (format {STATS_FORMAT})")
            if int(data["version"]) != STATS_VERSION:
                raise UserError(f"{path}: statistics format version {int(data['version'])}, expected "
                                f"{STATS_VERSION}; recompute it with --save-stats")
            return Features(pool=data["pool"], logits=data["logits"],
                            source=f"{path} (statistics of {data['source']})",
                            weights_sha256=str(data["weights_sha256"]),
                            source_sha256=str(data["source_sha256"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"{path}: unreadable statistics file ({e})") from None


def open_images(path):
    """An image set: a folder of images or an ADM-layout .npz."""
    path = Path(path)
    if path.is_dir():
        return ImageFolder(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.suffix.lower() == ".npz":
        return AdmNpz(path)
    hint = " (token grids in a .npy are scored with --dataset DIR)" if path.suffix.lower() == ".npy" else ""
    raise UserError(f"{path}: expected a folder of images, an .npz in {ADM_LAYOUT}, or a statistics "
                    f"file written by --save-stats{hint}")


# ---------------------------------------------------------------------------------------------
# torch-fidelity's Inception


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
    return model.to(device)


def extract_features(images, model, batch_size, device):
    """(pool (N, 2048), logits (N, 1008)) float32 of an image set through the Inception model."""
    pool, logits = [], []
    with torch.no_grad():
        for batch in images.batches(batch_size):
            p, lg = model(batch.to(device))
            pool.append(p.float().cpu())
            logits.append(lg.float().cpu())
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


def load_features(path, inception, cache=None, log=print):
    """Features of an image set or statistics file. With `cache` (a statistics file path), the
    cached features are reused while they match the images' and the weights' digests, and
    (re)computed and written otherwise."""
    if is_stats_file(path):
        if cache is not None:
            raise UserError(f"{path}: is already a statistics file; --reference-stats caches a folder or .npz")
        return load_stats(path)
    images = open_images(path)
    if cache is None:
        log(f"{path}: Inception features of {len(images)} images")
        return inception.features(images)
    source_sha256 = images.sha256()
    if Path(cache).is_file():
        cached = load_stats(cache)
        if cached.source_sha256 == source_sha256 and cached.weights_sha256 == inception.weights_sha256:
            log(f"{path}: reusing cached statistics {cache} ({len(cached)} images)")
            return cached
        changed = "images" if cached.source_sha256 != source_sha256 else "Inception weights"
        log(f"{cache}: stale (the {changed} changed); recomputing")
    log(f"{path}: Inception features of {len(images)} images, cached in {cache}")
    features = inception.features(images, source_sha256)
    save_stats(cache, features)
    return features


def save_features_of(path, inception, out, log=print):
    """Compute and write the statistics file of one image set (`evaluate.py SET --save-stats OUT`)."""
    images = open_images(path)
    log(f"{path}: Inception features of {len(images)} images")
    features = inception.features(images, images.sha256())
    save_stats(out, features)
    return features


# ---------------------------------------------------------------------------------------------
# The metrics

METRICS = ("fid", "kid", "isc", "prdc")
JSON_KEYS = ("fid", "kid_mean", "kid_std", "isc_mean", "isc_std", "precision", "recall", "density",
             "coverage", "n_samples", "n_reference")


def image_metrics(samples, reference, wanted=METRICS, kid_subset_size=metrics.KID_SUBSET_SIZE,
                  kid_subsets=metrics.KID_SUBSETS, seed=0):
    """{JSON_KEYS: value or None} and a list of notes, from two Features (reference may be None
    when only IS is wanted)."""
    out = dict.fromkeys(JSON_KEYS)
    notes = []
    out["n_samples"] = len(samples)
    binary = [m for m in wanted if m != "isc"]
    if binary and reference is None:
        raise UserError(f"{', '.join(binary)} compare with a REFERENCE; give one (or ask only --metrics isc)")
    if reference is not None:
        out["n_reference"] = len(reference)
        if samples.weights_sha256 != reference.weights_sha256:
            raise UserError(f"{reference.source}: features computed with other Inception weights (sha256 "
                            f"{reference.weights_sha256[:12]}...) than {samples.source} "
                            f"({samples.weights_sha256[:12]}...); recompute one of them")
    if "fid" in wanted:
        out["fid"] = metrics.fid(samples.pool, reference.pool)
    if "kid" in wanted:
        out["kid_mean"], out["kid_std"], size = metrics.kid(samples.pool, reference.pool, kid_subset_size,
                                                            kid_subsets)
        if size < kid_subset_size:
            notes.append(f"KID subset size clamped from {kid_subset_size} to {size} (the smaller set)")
    if "isc" in wanted:
        out["isc_mean"], out["isc_std"], splits = metrics.inception_score(samples.logits)
        if splits < metrics.ISC_SPLITS:
            notes.append(f"IS over {splits} splits (at least 2 images each)")
    if "prdc" in wanted:
        out.update(metrics.precision_recall_density_coverage(reference.pool, samples.pool, seed=seed))
        if max(len(samples), len(reference)) > metrics.PRDC_MAX_ROWS:
            notes.append(f"precision/recall/density/coverage on seeded subsets of {metrics.PRDC_MAX_ROWS} rows")
    return out, notes
