"""Token-space evaluation for datasets without a VQ-GAN (digits, MNIST): token grids are scored
with the features of a small classifier trained on the dataset's train split only.

The classifier. A three-layer CNN over a learned token embedding, trained on the train split's
class labels; its features are the 64 pre-activations of the penultimate layer (pre-ReLU: no
dead, always-zero dimensions in the covariance). Tokens enter through `nn.Embedding(V, 16)`,
which equals one-hot input followed by a 1x1 convolution: it assumes no order among token ids
(a VQ codebook has none), learns the gray-level order of the discrete MNIST sets from data, and
costs V x 16 weights however large the vocabulary. Training is seeded and runs on the CPU (the
digits set trains in seconds on two cores); the result is cached (`evaluation-classifier.pt`
beside the dataset) with the SHA-256 of the train split it was trained on and its accuracy on
the eval split, and retrained when the train split changes. Eval rows are never trained on.

The metrics, with the whole train split's features as the real set: `fd`, the Fréchet distance
between Gaussians fitted to the features (float64, `metrics.frechet_distance`); `precision`,
`recall`, `density`, `coverage` from prdc with k = 5 (its real set: at most 5,000 train rows,
a seeded subset fixed per evaluator, so each call's N x N distances stay small on MNIST);
with labels `cond_accuracy`, the share of samples the classifier assigns to their requested
class; `memorisation`, the share of samples identical to some training grid.

Reference rows, scored by the same code, say what the numbers mean:
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
import contextlib
import hashlib
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evaluation import metrics
from evaluation.report import format_table
from infra.errors import UserError
from infra.files import atomic_path

CLASSIFIER_FORMAT = "sundae-token-classifier"
CLASSIFIER_VERSION = 1
CACHE_NAME = "evaluation-classifier.pt"
# how the classifier is trained; a cached classifier trained otherwise is retrained. `examples`:
# examples seen in training whatever the split size (1 to 60 epochs).
TRAIN_RECIPE = {"examples": 50_000, "batch_size": 128, "lr": 3e-3}
PRDC_REAL_ROWS = 5000
ROW_COLUMNS = ("n", "fd", "precision", "recall", "density", "coverage", "cond_accuracy", "memorisation")


# ---------------------------------------------------------------------------------------------
# Checks of user-given arrays


def check_token_grids(tokens, shape, vocab_size, name):
    """(N, h, w) integer grids with values in [0, vocab_size), else UserError naming `name`."""
    tokens = np.asarray(tokens)
    h, w = shape
    if tokens.ndim != 3 or tokens.shape[1:] != (h, w):
        raise UserError(f"{name}: expected (N, {h}, {w}) token grids (the dataset's grid shape), "
                        f"got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise UserError(f"{name}: expected integer tokens, got dtype {tokens.dtype}")
    if len(tokens) == 0:
        raise UserError(f"{name}: holds no token grids")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        raise UserError(f"{name}: token values must lie in [0, {vocab_size}) (the dataset's vocabulary), "
                        f"got values in [{low}, {high}]")
    return tokens


def check_labels(labels, n, num_classes, name):
    """(n,) integer class labels in [0, num_classes), else UserError naming `name`."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise UserError(f"{name}: expected ({n},) labels, one per sample, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{name}: expected integer class labels, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{name}: labels must lie in [0, {num_classes}) (the dataset's classes), "
                        f"got values in [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)


def split_sha256(tokens, labels):
    """SHA-256 of a split's grids and labels, independent of their integer dtypes."""
    digest = hashlib.sha256(repr(tuple(np.shape(tokens))).encode())
    for start in range(0, len(tokens), 4096):  # chunks: a 60k x 28 x 28 split as int64 is 376 MB
        digest.update(np.ascontiguousarray(tokens[start:start + 4096], dtype=np.int64).tobytes())
    if labels is not None:
        digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def row_digests(tokens):
    """One 128-bit digest per grid: exact-match lookups without keeping every grid's bytes."""
    return [hashlib.blake2b(np.ascontiguousarray(row, dtype=np.int64).tobytes(), digest_size=16).digest()
            for row in tokens]


# ---------------------------------------------------------------------------------------------
# The classifier


class TokenClassifier(nn.Module):
    """Token grid (B, h, w) -> class logits; `features` gives the (B, feature_dim) embedding."""

    def __init__(self, vocab_size, num_classes, embed_dim=16, width=32, feature_dim=64):
        super().__init__()
        self.config = {"vocab_size": vocab_size, "num_classes": num_classes, "embed_dim": embed_dim,
                       "width": width, "feature_dim": feature_dim}
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.convs = nn.Sequential(
            nn.Conv2d(embed_dim, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),  # any grid size -> 4 x 4
        )
        self.project = nn.Linear(2 * width * 16, feature_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(feature_dim, num_classes))

    def features(self, tokens):
        x = self.embed(tokens).permute(0, 3, 1, 2)  # (B, embed_dim, h, w)
        return self.project(self.convs(x).flatten(1))

    def forward(self, tokens):
        return self.head(self.features(tokens))


@contextlib.contextmanager
def one_thread():
    """Run the classifier on one intra-op thread, restoring the caller's setting afterwards: its
    ops are tiny, and on a busy two-core machine a second spinning thread makes each training
    step ten times slower instead of twice as fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _batches(tokens, batch_size=1024):
    for start in range(0, len(tokens), batch_size):
        yield torch.from_numpy(np.asarray(tokens[start:start + batch_size], dtype=np.int64))


def features_and_logits(model, tokens):
    """(features (N, feature_dim), logits (N, classes)) as float64 / float32 arrays."""
    model.eval()
    feats, logits = [], []
    with torch.no_grad(), one_thread():
        for x in _batches(tokens):
            f = model.features(x)
            feats.append(f)
            logits.append(model.head(f))
    return torch.cat(feats).double().numpy(), torch.cat(logits).numpy()


def train_classifier(tokens, labels, vocab_size, num_classes, seed=0, recipe=None):
    """A TokenClassifier fit to (N, h, w) grids and (N,) labels: seeded, on the CPU.

    Only the arrays given are seen: callers pass the train split.
    """
    recipe = {**TRAIN_RECIPE, **(recipe or {})}
    batch_size, lr = recipe["batch_size"], recipe["lr"]
    x_all = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    n = len(x_all)
    epochs = int(np.clip(round(recipe["examples"] / n), 1, 60))
    steps = epochs * -(-n // batch_size)
    # fork_rng: initialisation and dropout draw from torch's global generator; seed it here and
    # give the caller's generator state back afterwards
    # gradients on even when called from an evaluation loop running in inference mode
    with torch.random.fork_rng(devices=[]), one_thread(), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(seed)
        model = TokenClassifier(vocab_size, num_classes)
        order = torch.Generator().manual_seed(seed)
        optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=order)
            for start in range(0, n, batch_size):
                i = perm[start:start + batch_size]
                loss = F.cross_entropy(model(x_all[i]), y_all[i])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
    return model.eval()


def accuracy(model, tokens, labels):
    return float((features_and_logits(model, tokens)[1].argmax(1) == np.asarray(labels)).mean())


def load_or_train_classifier(train_tokens, train_labels, vocab_size, num_classes, eval_tokens=None,
                             eval_labels=None, cache_path=None, seed=0, log=print):
    """(classifier, eval accuracy or None): the cached one when it was trained on this train split
    with this seed, else a new one (cached when `cache_path` is given)."""
    train_sha256 = split_sha256(train_tokens, train_labels)
    eval_sha256 = split_sha256(eval_tokens, eval_labels) if eval_tokens is not None else None
    config = {"vocab_size": vocab_size, "num_classes": num_classes}
    cache_path = Path(cache_path) if cache_path is not None else None
    if cache_path is not None and cache_path.is_file():
        try:
            cached = torch.load(cache_path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:  # damaged: replace it
            cached, reason = None, f"unreadable ({(str(e).splitlines() or [type(e).__name__])[0]})"
        else:
            reason = "trained on another train split, seed or recipe"
        if (isinstance(cached, dict) and cached.get("format") == CLASSIFIER_FORMAT
                and cached.get("version") == CLASSIFIER_VERSION and cached.get("train_sha256") == train_sha256
                and cached.get("seed") == seed and cached.get("recipe") == TRAIN_RECIPE
                and all(cached["config"].get(k) == v for k, v in config.items())):
            model = TokenClassifier(**cached["config"])
            model.load_state_dict(cached["state_dict"])
            model.eval()
            acc = cached.get("eval_accuracy")
            if eval_sha256 is not None and cached.get("eval_sha256") != eval_sha256:
                acc = accuracy(model, eval_tokens, eval_labels)  # the eval split changed: cheap to redo
            log(f"token classifier: {cache_path} (trained on this train split, {len(train_tokens)} grids; "
                f"accuracy on the eval split {_fmt(acc)})")
            return model, acc
        log(f"token classifier: {cache_path} is stale ({reason}); retraining")
    start = time.perf_counter()
    model = train_classifier(train_tokens, train_labels, vocab_size, num_classes, seed=seed)
    acc = accuracy(model, eval_tokens, eval_labels) if eval_tokens is not None else None
    where = f", cached in {cache_path}" if cache_path is not None else ""
    log(f"token classifier: trained on the {len(train_tokens)} train grids in "
        f"{time.perf_counter() - start:.1f} s; accuracy on the eval split {_fmt(acc)}{where}")
    if cache_path is not None:
        payload = {"format": CLASSIFIER_FORMAT, "version": CLASSIFIER_VERSION, "config": model.config,
                   "state_dict": model.state_dict(), "seed": seed, "recipe": TRAIN_RECIPE,
                   "train_sha256": train_sha256, "train_count": len(train_tokens),
                   "eval_sha256": eval_sha256, "eval_accuracy": acc}
        try:
            with atomic_path(cache_path) as tmp:
                torch.save(payload, tmp)
        except OSError as e:  # a read-only dataset directory: evaluate anyway, uncached
            log(f"token classifier: could not cache it in {cache_path} ({e})")
    return model, acc


def _fmt(x):
    return "n/a (no eval split)" if x is None else f"{x:.3f}"


# ---------------------------------------------------------------------------------------------
# The evaluator


class TokenEvaluator:
    """Scores token grids against a labelled token dataset's train split.

    train_tokens (N, h, w) and train_labels (N,) train the feature classifier and are the real
    set; eval_tokens/eval_labels (optional) give its accuracy and the "eval vs train" row.
    `cache_path`: where the classifier is cached (None: trained in memory each time).
    """

    def __init__(self, train_tokens, train_labels, eval_tokens, eval_labels, vocab_size, num_classes=None,
                 cache_path=None, seed=0, log=print):
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
        self.classifier, self.eval_accuracy = load_or_train_classifier(
            self.train_tokens, self.train_labels, self.vocab_size, self.num_classes, self.eval_tokens,
            self.eval_labels, cache_path, seed, log)
        self.train_features = features_and_logits(self.classifier, self.train_tokens)[0]  # (N, 64)
        self.train_statistics = metrics.gaussian_statistics(self.train_features)
        rng = np.random.default_rng(seed)
        self.prdc_real = (self.train_features if len(self.train_features) <= PRDC_REAL_ROWS else
                          self.train_features[np.sort(rng.choice(len(self.train_features), PRDC_REAL_ROWS,
                                                                 replace=False))])
        self.train_rows = set(row_digests(self.train_tokens))
        # per-class, per-position token frequencies: (classes, h*w, V) cumulative probabilities
        flat = self.train_tokens.reshape(len(self.train_tokens), -1)
        counts = np.zeros((self.num_classes, flat.shape[1], self.vocab_size))
        for c in range(self.num_classes):
            rows = flat[self.train_labels == c]
            for p in range(flat.shape[1]):
                counts[c, p] = np.bincount(rows[:, p], minlength=self.vocab_size)
        self.class_counts = np.bincount(self.train_labels, minlength=self.num_classes)
        self._cdf = np.cumsum(counts, -1) / np.maximum(counts.sum(-1, keepdims=True), 1)
        pooled = counts.sum(0)
        self._cdf_pooled = np.cumsum(pooled, -1) / pooled.sum(-1, keepdims=True)

    def _check(self, samples, labels):
        samples = check_token_grids(samples, self.shape, self.vocab_size, "samples")
        if labels is not None:
            labels = check_labels(labels, len(samples), self.num_classes, "labels")
        return samples, labels

    def score(self, samples, labels=None):
        """{n, fd, precision, recall, density, coverage, cond_accuracy, memorisation} of (N, h, w)
        grids; `cond_accuracy` is None without labels."""
        samples, labels = self._check(samples, labels)
        feats, logits = features_and_logits(self.classifier, samples)
        row = {"n": len(samples),
               "fd": metrics.frechet_distance(*metrics.gaussian_statistics(feats), *self.train_statistics)}
        row.update(metrics.precision_recall_density_coverage(self.prdc_real, feats, seed=self.seed))
        row["cond_accuracy"] = float((logits.argmax(1) == labels).mean()) if labels is not None else None
        row["memorisation"] = float(np.mean([d in self.train_rows for d in row_digests(samples)]))
        return row

    def sample_marginals(self, n, labels=None, seed=0):
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
            groups = [(np.flatnonzero(labels == c), self._cdf[c]) for c in range(self.num_classes)]
        for rows, cdf in groups:
            u = rng.random((len(rows), positions))
            for p in range(positions):
                out[rows, p] = np.searchsorted(cdf[p], u[:, p], side="right")
        return np.minimum(out, self.vocab_size - 1).reshape(n, *self.shape)

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


RELATIVE_METRICS = ("fd", "precision", "recall", "coverage")


def relative_to_real(rows):
    """{metric: samples / eval-vs-train} at the eval row's n (the class-matched subset when the
    samples are more), for fd, precision, recall and coverage; None without an eval row."""
    real = rows.get("eval vs train")
    if real is None:
        return None
    ours = rows.get(f"samples (n={real['n']})", rows["samples"])
    if ours["n"] != real["n"]:
        return None
    return {k: ours[k] / real[k] for k in RELATIVE_METRICS if real.get(k)}


def format_rows(rows):
    """The printed table of `TokenEvaluator.evaluate` rows, with what the reader needs to know."""
    lines = [format_table(rows, ROW_COLUMNS, first="")]
    ratios = relative_to_real(rows)
    if ratios:
        lines.append(f"samples / eval vs train at n={rows['eval vs train']['n']}: "
                     + ", ".join(f"{k} {v:.3f}x" for k, v in ratios.items())
                     + " (real data scores 1x; FD lower is better, the others higher)")
    n = rows.get("samples", {}).get("n")
    m = rows.get("eval vs train", {}).get("n")
    if n is not None and m is not None and m < n:
        how = (" in the samples' class proportions" if rows["samples"].get("cond_accuracy") is not None
               else "")
        lines.append(f"The eval split holds only {m} rows{how} (drawn without replacement), so 'eval vs "
                     f"train' is scored at n={m}, beside samples and marginals at n={m}.")
    lines.append("Real set: the train split's features. FD falls as n grows: compare rows at equal n only. "
                 "'marginals' (independent per-position tokens) is the floor a model must beat.")
    return "\n".join(lines)
