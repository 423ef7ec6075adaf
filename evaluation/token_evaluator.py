"""Token-space evaluation for datasets without a VQ-GAN (digits, MNIST): token grids are scored
against the dataset's train split in the feature space of a small classifier trained on that
split only (token_classifier.py), beside reference rows that say what the numbers mean.

The metrics, with the whole train split's features as the real set: `fd`, the Fréchet distance
between Gaussians fitted to the features (float64, `metrics.frechet_distance`); `precision`,
`recall`, `density`, `coverage` from prdc with k = 5 (its real set: at most 5,000 train rows,
a seeded subset fixed per evaluator, so each call's N x N distances stay small on MNIST);
with labels `cond_accuracy`, the share of samples the classifier assigns to their requested
class; `memorisation`, the share of samples identical to some training grid, and `near_copies`,
the share within a Hamming distance of some training grid that held-out real data rarely comes
(token_copies.py: a training grid with a few tokens changed is a near copy, not a new sample).

Reference rows, scored by the same code:
  eval vs train   held-out real grids (the eval split): what "as good as real data" scores. Drawn
                  without replacement, with the labels' class counts when labels are given.
  marginals       every position drawn independently from the train split's token frequencies
                  at that position (of the requested class, for labelled data): no spatial
                  structure, the floor any real model must beat.
All rows are scored at the samples' N when the eval split can supply N rows. It often cannot
(digits: 180 rows against 1000 samples). Resampling it with replacement would be dishonest
(duplicates shrink the covariance and inflate density and precision), so the table then has two
blocks: "samples" and "marginals" at N, and at M, the most eval rows the split holds in the
labels' class proportions, "samples (n=M)" (a subset with those class counts), "eval vs train"
and "marginals (n=M)". Each block compares at equal N.
FD falls as N grows (its estimate is biased upwards at small N): compare rows at equal N only.
It is also noisy at small N: on digits, FD of random 133-row subsets of real grids varies by
about a third between draws (64 feature dimensions, 133 rows), so the block at the eval split's
size shows the scale; the block at the samples' N (1000 in the demo) is the precise comparison.
"""
import numpy as np

from evaluation import metrics
from evaluation.token_classifier import features_and_logits, load_or_train_classifier
from evaluation.token_copies import NearestTrainGrid, calibrate
from evaluation.token_inputs import check_labels, check_token_grids
from infra.errors import UserError

PRDC_REAL_ROWS = 5000


class PositionMarginals:
    """The per-position token frequencies of a labelled token dataset, per class and pooled: the
    "marginals" baseline, every position drawn independently (no spatial structure)."""

    def __init__(self, tokens, labels, vocab_size, num_classes):
        flat = np.asarray(tokens).reshape(len(tokens), -1)  # (N, h*w)
        self.shape, self.vocab_size = np.shape(tokens)[1:], int(vocab_size)
        counts = np.zeros((num_classes, flat.shape[1], self.vocab_size))  # (classes, h*w, V)
        for c in range(num_classes):
            rows = flat[labels == c]
            for p in range(flat.shape[1]):
                counts[c, p] = np.bincount(rows[:, p], minlength=self.vocab_size)
        self.class_counts = np.bincount(labels, minlength=num_classes)
        self._cdf = np.cumsum(counts, -1) / np.maximum(counts.sum(-1, keepdims=True), 1)
        pooled = counts.sum(0)
        self._cdf_pooled = np.cumsum(pooled, -1) / pooled.sum(-1, keepdims=True)

    def sample(self, n, labels=None, seed=0):
        """(n, h, w) grids, every position drawn independently from the train split's token
        frequencies at that position (those of the row's class when labels are given)."""
        rng = np.random.default_rng(seed)
        positions = self._cdf_pooled.shape[0]
        out = np.empty((n, positions), dtype=np.int64)
        if labels is None:
            groups = [(np.arange(n), self._cdf_pooled)]
        else:
            missing = [c for c in np.unique(labels) if self.class_counts[c] == 0]
            if missing:
                raise UserError(f"labels: class {missing[0]} has no rows in the train split")
            groups = [(np.flatnonzero(labels == c), self._cdf[c]) for c in range(len(self.class_counts))]
        for rows, cdf in groups:
            u = rng.random((len(rows), positions))
            for p in range(positions):
                out[rows, p] = np.searchsorted(cdf[p], u[:, p], side="right")
        return np.minimum(out, self.vocab_size - 1).reshape(n, *self.shape)


class TokenEvaluator:
    """Scores token grids against a labelled token dataset's train split.

    train_tokens (N, h, w) and train_labels (N,) train the feature classifier and are the real
    set; eval_tokens/eval_labels (optional) give its accuracy, the near-copy threshold and the
    "eval vs train" row. `cache_dir`: the directory the classifier is cached in, under a name
    derived from the train split (None: trained in memory each time); `classifier_path` is then
    the file it was read from or written to, None when uncached.
    """

    def __init__(self, train_tokens, train_labels, eval_tokens, eval_labels, vocab_size, num_classes=None,
                 cache_dir=None, seed=0, log=print):
        if train_labels is None:
            raise UserError("token-space evaluation trains its feature classifier on class labels, and this "
                            "dataset has none; decode the samples to images and use the image metrics")
        self.vocab_size, self.seed = int(vocab_size), seed
        if np.ndim(train_tokens) != 3:
            raise UserError(f"train split: expected (N, h, w) token grids, got shape {np.shape(train_tokens)}")
        self.train_tokens = check_token_grids(train_tokens, np.shape(train_tokens)[1:], vocab_size, "train split")
        self.shape = self.train_tokens.shape[1:]
        self.num_classes = int(num_classes or int(np.max(train_labels)) + 1)
        self.train_labels = check_labels(train_labels, len(self.train_tokens), self.num_classes, "train labels")
        self.eval_tokens = self.eval_labels = None
        if eval_tokens is not None:
            self.eval_tokens = check_token_grids(eval_tokens, self.shape, vocab_size, "eval split")
            self.eval_labels = check_labels(eval_labels, len(self.eval_tokens), self.num_classes, "eval labels")
        self.classifier, self.eval_accuracy, self.classifier_path = load_or_train_classifier(
            self.train_tokens, self.train_labels, self.vocab_size, self.num_classes, self.eval_tokens,
            self.eval_labels, cache_dir, seed, log)
        self.train_features = features_and_logits(self.classifier, self.train_tokens)[0]  # (N, 64)
        self.train_statistics = metrics.gaussian_statistics(self.train_features)
        rng = np.random.default_rng(seed)
        self.prdc_real = (self.train_features if len(self.train_features) <= PRDC_REAL_ROWS else
                          self.train_features[np.sort(rng.choice(len(self.train_features), PRDC_REAL_ROWS,
                                                                 replace=False))])
        self.nearest = NearestTrainGrid(self.train_tokens, self.vocab_size)
        self.near_copy_threshold, self.near_copy_rule = calibrate(self.nearest, self.eval_tokens, seed)
        self.marginals = PositionMarginals(self.train_tokens, self.train_labels, self.vocab_size, self.num_classes)

    def _check(self, samples, labels):
        samples = check_token_grids(samples, self.shape, self.vocab_size, "samples")
        if labels is not None:
            labels = check_labels(labels, len(samples), self.num_classes, "labels")
        return samples, labels

    def score(self, samples, labels=None):
        """{n, fd, precision, recall, density, coverage, cond_accuracy, memorisation, near_copies}
        of (N, h, w) grids; `cond_accuracy` is None without labels."""
        samples, labels = self._check(samples, labels)
        feats, logits = features_and_logits(self.classifier, samples)
        row = {"n": len(samples),
               "fd": metrics.frechet_distance(*metrics.gaussian_statistics(feats), *self.train_statistics)}
        row.update(metrics.precision_recall_density_coverage(self.prdc_real, feats, seed=self.seed))
        row["cond_accuracy"] = float((logits.argmax(1) == labels).mean()) if labels is not None else None
        distances = self.nearest.distances(samples)
        row["memorisation"] = float(np.mean(distances == 0))
        row["near_copies"] = float(np.mean(distances <= self.near_copy_threshold))
        return row

    def sample_marginals(self, n, labels=None, seed=0):
        """(n, h, w) grids of the train split's per-position marginals (PositionMarginals.sample)."""
        return self.marginals.sample(n, labels, seed)

    def _eval_counts(self, n, labels):
        """Per-class counts of the eval rows to score, or None (no labels): the labels' class
        counts, scaled down just enough that the eval split holds them without replacement."""
        if labels is None:
            return None
        want = np.bincount(labels, minlength=self.num_classes)
        have = np.bincount(self.eval_labels, minlength=self.num_classes)
        short = [c for c in range(self.num_classes) if want[c] and not have[c]]
        if short:
            raise UserError(f"labels: class {short[0]} has no rows in the eval split to compare with")
        scale = min(1.0, min(have[c] / want[c] for c in range(self.num_classes) if want[c]))
        return np.floor(want * scale + 1e-9).astype(np.int64)

    @staticmethod
    def _draw(size, labels, counts, n, rng):
        """Indices into `size` rows, without replacement: `counts[c]` rows of class c (by
        `labels`), or `n` of all rows when counts is None."""
        if counts is None:
            return np.sort(rng.choice(size, size=n, replace=False))
        return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
                                       for c, k in enumerate(counts) if k]))

    def reference_rows(self, n, labels=None, seed=0):
        """{"eval vs train": row, "marginals": row} for comparison with n samples of these labels.

        The eval row holds min(n, what the eval split allows) rows, see the module docstring;
        it is absent when there is no eval split.
        """
        if labels is not None:
            labels = check_labels(labels, n, self.num_classes, "labels")
        rng = np.random.default_rng(seed)
        rows = {}
        if self.eval_tokens is not None:
            counts = self._eval_counts(n, labels)
            n_eval = min(n, len(self.eval_tokens))
            idx = self._draw(len(self.eval_tokens), self.eval_labels, counts, n_eval, rng)
            rows["eval vs train"] = self.score(self.eval_tokens[idx],
                                               self.eval_labels[idx] if labels is not None else None)
        rows["marginals"] = self.score(self.sample_marginals(n, labels, seed=seed), labels)
        return rows

    def evaluate(self, samples, labels=None, seed=0):
        """The table's rows, each at a stated n: "samples", "eval vs train", "marginals" at the
        samples' n. When the eval split holds fewer rows (m), the rows are "samples" and
        "marginals" at n, then "samples (n=m)" (a subset with the eval row's class counts),
        "eval vs train" and "marginals (n=m)": FD depends on n, so each block compares at its own."""
        samples, labels = self._check(samples, labels)
        n = len(samples)
        rows = {"samples": self.score(samples, labels)}
        references = self.reference_rows(n, labels, seed)
        eval_row = references.get("eval vs train")
        if eval_row is None or eval_row["n"] == n:
            return {**rows, **references}
        m = eval_row["n"]
        idx = self._draw(n, labels, self._eval_counts(n, labels), m, np.random.default_rng(seed + 1))
        sub_labels = labels[idx] if labels is not None else None
        rows["marginals"] = references["marginals"]
        rows[f"samples (n={m})"] = self.score(samples[idx], sub_labels)
        rows["eval vs train"] = eval_row
        rows[f"marginals (n={m})"] = self.score(self.sample_marginals(m, sub_labels, seed=seed), sub_labels)
        return rows
