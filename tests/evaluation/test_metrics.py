"""Feature-space metrics against independent float64 NumPy/SciPy references."""
import itertools

import numpy as np
import pytest
import scipy.linalg

from evaluation import metrics


def random_features(n, d, seed, shift=0.0):
    """(n, d) Gaussian features with a random full-rank covariance."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    return rng.normal(size=(n, d)) @ mixing + shift


def frechet_reference(x, y):
    """The textbook FID (pytorch-fid's): scipy's sqrtm of S_x S_y, its tiny imaginary part dropped."""
    mu_x, mu_y = x.mean(0), y.mean(0)
    s_x, s_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_x @ s_y)
    if np.iscomplexobj(covmean):
        assert np.abs(covmean.imag).max() < 1e-6
        covmean = covmean.real
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(s_x) + np.trace(s_y) - 2 * np.trace(covmean))


def mmd_poly_unbiased(x, y):
    """Unbiased MMD² with KID's kernel k(a, b) = (a·b / d + 1)³, written out pair by pair."""
    d = x.shape[1]
    def k(a, b):
        return (a @ b.T / d + 1) ** 3

    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.sum() / (m * n))


def test_frechet_distance_agrees_with_scipy_reference():
    x, y = random_features(400, 12, seed=0), random_features(300, 12, seed=1, shift=0.3)
    ours = metrics.frechet_distance(*metrics.gaussian_statistics(x), *metrics.gaussian_statistics(y))
    assert ours == pytest.approx(frechet_reference(x, y), rel=1e-8)


def test_torch_fidelity_fid_agrees_with_scipy_reference():
    x, y = random_features(400, 12, seed=2), random_features(300, 12, seed=3, shift=-0.5)
    assert metrics.fid(x, y) == pytest.approx(frechet_reference(x, y), rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    x = random_features(500, 16, seed=4)
    assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-6)
    assert metrics.frechet_distance(*metrics.gaussian_statistics(x), *metrics.gaussian_statistics(x)) == \
        pytest.approx(0.0, abs=1e-8)
    shifts = [0.25, 0.5, 1.0, 2.0]
    fids = [metrics.fid(x, x + s) for s in shifts]
    assert all(a < b for a, b in itertools.pairwise(fids))
    # same covariance: only the mean term is left, |s * 1|² = d s²
    assert fids == pytest.approx([16 * s ** 2 for s in shifts], rel=1e-5)


def test_kid_agrees_with_a_hand_written_unbiased_mmd():
    x, y = random_features(60, 8, seed=5), random_features(60, 8, seed=6, shift=0.4)
    # a subset as large as the set is the whole set, permuted: every subset gives the full MMD
    mean, std, size = metrics.kid(x, y, subset_size=60, subsets=3)
    assert size == 60
    assert mean == pytest.approx(mmd_poly_unbiased(x, y), rel=1e-6)
    assert std == pytest.approx(0.0, abs=1e-6 * abs(mean))


def test_kid_subset_size_is_clamped_to_the_smaller_set():
    x, y = random_features(40, 8, seed=7), random_features(25, 8, seed=8)
    mean, _, size = metrics.kid(x, y, subset_size=1000, subsets=5)
    assert size == 25 and np.isfinite(mean)


def test_inception_score_agrees_with_the_definition():
    logits = np.random.default_rng(9).normal(size=(50, 7)) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    kl = (p * (np.log(p) - np.log(p.mean(0, keepdims=True)))).sum(1)
    mean, std, splits = metrics.inception_score(logits, splits=1)
    assert splits == 1 and mean == pytest.approx(np.exp(kl.mean()), rel=1e-9) and std == 0


def test_prdc_of_a_set_with_itself_and_with_a_distant_set():
    x = random_features(200, 6, seed=10)
    same = metrics.precision_recall_density_coverage(x, x.copy())
    assert same["precision"] == 1 and same["recall"] == 1 and same["coverage"] == 1
    far = metrics.precision_recall_density_coverage(x, x + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
