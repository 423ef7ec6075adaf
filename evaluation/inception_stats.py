"""Inception statistics files, and the features of an image set through them as a cache.

A statistics file (`.npz`, `format` = "sundae-inception-stats", version 1) holds a set's pool
features (N, 2048) float32 and unbiased logits (N, 1008) float32, torch-fidelity's FID mean and
covariance, the SHA-256 of the source images (file names and bytes of a folder, the bytes of an
.npz) and of the Inception weights. A cached reference is reused only while both digests match.
"""
import zipfile
from pathlib import Path

import numpy as np

from evaluation import metrics
from evaluation.image_sets import open_images
from evaluation.inception import Features
from infra.errors import UserError
from infra.files import atomic_path

STATS_FORMAT = "sundae-inception-stats"
STATS_VERSION = 1


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
