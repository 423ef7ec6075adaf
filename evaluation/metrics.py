"""Metrics on feature vectors, whatever network produced them.

FID, KID and IS are torch-fidelity's own functions (what taming-transformers and Unleashing
Transformers report with), applied to features extracted once so the same features also serve
prdc and the cached statistics files. Precision, recall, density and coverage are prdc's
(Naeem et al. 2020) with k = 5 nearest neighbours, as Unleashing Transformers. `frechet_distance`
is a float64 NumPy implementation for features that are not Inception's (the token classifier).
"""
import contextlib
import io

import numpy as np
import prdc
import torch

from infra.errors import UserError

PRDC_K = 5
# prdc builds dense N x N distance matrices: above this many rows a set is subsampled (seeded)
# so 50k-sample evaluations fit in memory (10k x 10k float32 is 400 MB).
PRDC_MAX_ROWS = 10_000
KID_SUBSET_SIZE = 1000  # torch-fidelity's defaults
KID_SUBSETS = 100
ISC_SPLITS = 10
FIDELITY_SEED = 2020  # torch-fidelity's rng_seed default: KID subsets and the IS shuffle


def _as_tensor(features):
    return features if torch.is_tensor(features) else torch.from_numpy(np.asarray(features))


# torch-fidelity is imported inside the functions that use it: its import takes seconds (it loads
# every feature extractor it ships) and token-space evaluation never needs it.


def fid_statistics(features):
    """torch-fidelity's FID statistics of (N, D) features: {"mu": (D,), "sigma": (D, D)}."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    if len(features) < 2:
        raise UserError(f"FID needs at least 2 images per set, got {len(features)}")
    return fid_features_to_statistics(_as_tensor(features).cpu())


def fid_from_statistics(stats_1, stats_2):
    """torch-fidelity's Fréchet Inception Distance between two `fid_statistics` results."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    return float(fid_statistics_to_metric(stats_1, stats_2, verbose=False)[KEY_METRIC_FID])


def fid(features_1, features_2):
    """torch-fidelity's FID between two (N, D) feature sets."""
    return fid_from_statistics(fid_statistics(features_1), fid_statistics(features_2))


def kid(features_1, features_2, subset_size=KID_SUBSET_SIZE, subsets=KID_SUBSETS, seed=FIDELITY_SEED):
    """torch-fidelity's KID (unbiased polynomial-kernel MMD² averaged over random subsets).

    A subset size above either set's size is clamped to the smaller set (KID is unbiased at any
    size, only noisier). Returns (mean, std, subset size used).
    """
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = min(subset_size, len(features_1), len(features_2))
    if size < 2:
        raise UserError(f"KID needs at least 2 images per set, got {len(features_1)} and {len(features_2)}")
    out = kid_features_to_metric(_as_tensor(features_1), _as_tensor(features_2), kid_subsets=subsets,
                                 kid_subset_size=size, rng_seed=seed, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD], size


def inception_score(logits, splits=ISC_SPLITS, seed=FIDELITY_SEED):
    """torch-fidelity's Inception Score of (N, classes) unbiased logits; (mean, std, splits used).

    Splits are clamped so that each holds at least 2 images (fewer images than splits would leave
    empty splits, NaN, and a one-image split always scores 1).
    """
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    if len(logits) < 2:
        raise UserError(f"the Inception Score needs at least 2 images, got {len(logits)}")
    splits = min(splits, len(logits) // 2)
    out = isc_features_to_metric(_as_tensor(logits), splits=splits, shuffle=True, rng_seed=seed)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD], splits


def _subsample(features, max_rows, rng):
    if len(features) <= max_rows:
        return features
    return features[np.sort(rng.choice(len(features), max_rows, replace=False))]


def precision_recall_density_coverage(real, fake, k=PRDC_K, max_rows=PRDC_MAX_ROWS, seed=0):
    """prdc's precision, recall, density and coverage of `fake` against `real` (k nearest).

    Precision/density: how much of `fake` lies in the real manifold (k-NN balls of real points);
    recall: how much of `real` lies in the fake manifold; coverage: share of real points whose
    ball holds a fake point. Sets above `max_rows` are subsampled with `seed`.
    """
    for name, f in (("reference", real), ("samples", fake)):
        if len(f) <= k:
            raise UserError(f"precision/recall need more than k={k} {name}, got {len(f)}")
    rng = np.random.default_rng(seed)
    real = _subsample(np.asarray(real, dtype=np.float32), max_rows, rng)
    fake = _subsample(np.asarray(fake, dtype=np.float32), max_rows, rng)
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        out = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    return {key: float(value) for key, value in out.items()}


def gaussian_statistics(features):
    """Mean (D,) and covariance (D, D) of (N, D) features, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        raise UserError(f"a Fréchet distance needs at least 2 rows per set, got {len(features)}")
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu_1, sigma_1, mu_2, sigma_2):
    """Fréchet distance between two Gaussians, in float64:
    |mu_1 - mu_2|² + tr(S_1) + tr(S_2) - 2 tr sqrt(S_1 S_2).

    tr sqrt(S_1 S_2) = tr sqrt(S_1^½ S_2 S_1^½), and the latter matrix is symmetric positive
    semi-definite, so its eigenvalues are real: no complex square root and no imaginary parts
    to discard (what scipy.linalg.sqrtm of S_1 S_2 needs), and rank-deficient covariances from
    fewer rows than dimensions are handled. Rounding below zero is clipped.
    """
    mu_1, mu_2 = np.asarray(mu_1, np.float64), np.asarray(mu_2, np.float64)
    sigma_1, sigma_2 = np.asarray(sigma_1, np.float64), np.asarray(sigma_2, np.float64)
    w, v = np.linalg.eigh(sigma_1)
    root_1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root_1 @ sigma_2 @ root_1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu_1 - mu_2
    distance = diff @ diff + np.trace(sigma_1) + np.trace(sigma_2) - 2 * tr_covmean
    return max(float(distance), 0.0)
