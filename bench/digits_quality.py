"""How digit-like are samples of the digits model? A classifier fit on real digits the prior never
saw scores a file of sampled token grids:

  confident  fraction of grids classified with probability >= 0.9 (recognisable digits)
  entropy    entropy (nats) of the histogram of predicted classes; ln 10 = 2.303 is all ten
             classes equally often (diverse samples), 0 is one class only

and the same numbers for the real held-out digits (scored out-of-fold, so no digit is scored by a
classifier that saw it).

    python bench/digits_quality.py demo-out/samples.npy [--data data/digits]
"""
import argparse
import math
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sundae.latents import LatentDataset  # noqa: E402


def classifier():
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))


def scores(probabilities, num_classes=10):
    confident = float((probabilities.max(1) >= 0.9).mean())
    counts = np.bincount(probabilities.argmax(1), minlength=num_classes)
    p = counts[counts > 0] / counts.sum()
    return confident, float(-(p * np.log(p)).sum())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", help=".npy of (N, 8, 8) sampled grids (sample.py --save-latents)")
    p.add_argument("--data", default="data/digits", help="the digits latent dataset (its eval split)")
    args = p.parse_args(argv)

    held_out = LatentDataset(args.data, "eval")
    x_real = np.asarray(held_out.tokens, dtype=np.float64).reshape(len(held_out), -1)
    y_real = np.asarray(held_out.labels)
    samples = np.load(args.samples)
    if samples.ndim != 3 or samples.shape[1:] != tuple(held_out.latent_shape):
        sys.exit(f"error: {args.samples}: expected (N, 8, 8) grids, got {samples.shape}")
    x_fake = samples.reshape(len(samples), -1).astype(np.float64)

    real_probs = cross_val_predict(classifier(), x_real, y_real, cv=5, method="predict_proba")
    model = classifier().fit(x_real, y_real)
    fake_probs = model.predict_proba(x_fake)

    real, fake = scores(real_probs), scores(fake_probs)
    accuracy = float((real_probs.argmax(1) == y_real).mean())
    print(f"classifier: logistic regression on {len(x_real)} held-out real digits "
          f"(out-of-fold accuracy {accuracy:.3f})")
    print(f"{'':<22}{'n':>6}{'confident>=0.9':>16}{'class entropy':>15}")
    print(f"{'real held-out digits':<22}{len(x_real):>6}{real[0]:>16.3f}{real[1]:>15.3f}")
    print(f"{'samples':<22}{len(x_fake):>6}{fake[0]:>16.3f}{fake[1]:>15.3f}")
    print(f"(max class entropy ln 10 = {math.log(10):.3f})")


if __name__ == "__main__":
    main()
