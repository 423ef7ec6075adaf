"""The token classifier whose features score token grids, its training, and its on-disk cache.

A three-layer CNN over a learned token embedding, trained on the train split's class labels; its
features are the 64 pre-activations of the penultimate layer (pre-ReLU: no dead, always-zero
dimensions in the covariance). Tokens enter through `nn.Embedding(V, 16)`, which equals one-hot
input followed by a 1x1 convolution: it assumes no order among token ids (a VQ codebook has
none), learns the gray-level order of the discrete MNIST sets from data, and costs V x 16
weights however large the vocabulary. Training is seeded and runs on the CPU (the digits set
trains in seconds on two cores). Eval rows are never trained on.

The cache. A classifier is cached in a directory (the dataset's, by default) as
`evaluation-classifier-<first 16 hex digits of the train split's SHA-256>.pt`, with its seed,
recipe and accuracy on the eval split. The name is a function of the train rows and labels
alone, so whoever asks (evaluate.py with the whole train split, training with a subset of it)
finds the classifier of the same rows in the same file, and other rows never overwrite it. A
file of that name that is not such a cache is never overwritten: it is a one-line error.
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

from infra.errors import UserError
from infra.files import atomic_path

CLASSIFIER_FORMAT = "sundae-token-classifier"
CLASSIFIER_VERSION = 1
CACHE_PREFIX = "evaluation-classifier-"
# how the classifier is trained; a cached classifier trained otherwise is retrained. `examples`:
# examples seen in training whatever the split size (1 to 60 epochs).
TRAIN_RECIPE = {"examples": 50_000, "batch_size": 128, "lr": 3e-3}


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


# ---------------------------------------------------------------------------------------------
# The cache


def split_sha256(tokens, labels):
    """SHA-256 of a split's grids and labels, independent of their integer dtypes."""
    digest = hashlib.sha256(repr(tuple(np.shape(tokens))).encode())
    for start in range(0, len(tokens), 4096):  # chunks: a 60k x 28 x 28 split as int64 is 376 MB
        digest.update(np.ascontiguousarray(tokens[start:start + 4096], dtype=np.int64).tobytes())
    if labels is not None:
        digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def cache_file(cache_dir, train_sha256):
    """Where the classifier of the train split with this digest is cached in `cache_dir`."""
    return Path(cache_dir) / f"{CACHE_PREFIX}{train_sha256[:16]}.pt"


def read_cache(path):
    """The classifier cache at `path` as saved, or None when there is no file; UserError when
    the file there is something else, which is left untouched."""
    if not path.exists():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:
        why = f"unreadable as one: {(str(e).splitlines() or [type(e).__name__])[0]}"
    else:
        if isinstance(cached, dict) and cached.get("format") == CLASSIFIER_FORMAT:
            return cached
        why = f"its format is not {CLASSIFIER_FORMAT!r}"
    raise UserError(f"{path}: not a token-classifier cache ({why}) and never overwritten; move it away "
                    "to cache the classifier there")


def _fits(cached, train_sha256, config, seed):
    return (cached.get("version") == CLASSIFIER_VERSION and cached.get("train_sha256") == train_sha256
            and cached.get("seed") == seed and cached.get("recipe") == TRAIN_RECIPE
            and all(cached.get("config", {}).get(k) == v for k, v in config.items()))


def load_or_train_classifier(train_tokens, train_labels, vocab_size, num_classes, eval_tokens=None,
                             eval_labels=None, cache_dir=None, seed=0, log=print):
    """(classifier, eval accuracy or None, cache file or None): the classifier cached in
    `cache_dir` for this train split, seed and recipe, else a new one, cached there when given.

    A stale cache of ours (other seed, recipe or version) is retrained and replaced; a directory
    that cannot be written leaves the classifier uncached (a read-only dataset still evaluates).
    """
    train_sha256 = split_sha256(train_tokens, train_labels)
    eval_sha256 = split_sha256(eval_tokens, eval_labels) if eval_tokens is not None else None
    config = {"vocab_size": vocab_size, "num_classes": num_classes}
    path = None
    if cache_dir is not None:
        if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
            raise UserError(f"{cache_dir}: the classifier cache directory is a file; give a directory")
        path = cache_file(cache_dir, train_sha256)
    cached = read_cache(path) if path is not None else None
    if cached is not None and _fits(cached, train_sha256, config, seed):
        # Built on the meta device: a fresh module's initialisation would draw from torch's global
        # generator, so a training run that found the cache would start its prior from other weights
        # than one that trained the classifier (training draws in a forked generator).
        with torch.device("meta"):
            model = TokenClassifier(**cached["config"])
        model.load_state_dict(cached["state_dict"], assign=True)
        model.eval()
        acc = cached.get("eval_accuracy")
        if eval_sha256 is not None and cached.get("eval_sha256") != eval_sha256:
            acc = accuracy(model, eval_tokens, eval_labels)  # the eval split changed: cheap to redo
        log(f"token classifier: {path} (trained on this train split, {len(train_tokens)} grids; "
            f"accuracy on the eval split {_fmt(acc)})")
        return model, acc, path
    if cached is not None:
        log(f"token classifier: {path} was trained with another seed, recipe or version; retraining")
    start = time.perf_counter()
    model = train_classifier(train_tokens, train_labels, vocab_size, num_classes, seed=seed)
    acc = accuracy(model, eval_tokens, eval_labels) if eval_tokens is not None else None
    log(f"token classifier: trained on the {len(train_tokens)} train grids in "
        f"{time.perf_counter() - start:.1f} s; accuracy on the eval split {_fmt(acc)}")
    if path is None:
        return model, acc, None
    payload = {"format": CLASSIFIER_FORMAT, "version": CLASSIFIER_VERSION, "config": model.config,
               "state_dict": model.state_dict(), "seed": seed, "recipe": TRAIN_RECIPE,
               "train_sha256": train_sha256, "train_count": len(train_tokens),
               "eval_sha256": eval_sha256, "eval_accuracy": acc}
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except UserError as e:  # a read-only dataset directory: evaluate anyway, uncached
        log(f"token classifier: not cached ({e})")
        return model, acc, None
    log(f"token classifier: cached in {path}")
    return model, acc, path


def _fmt(x):
    return "n/a (no eval split)" if x is None else f"{x:.3f}"
