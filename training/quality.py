"""Sample quality while training: the [evaluation] section's metrics of the EMA model's samples,
computed by the same code as evaluate.py.

Token datasets (no VQ-GAN: digits, MNIST) are scored in the feature space of a classifier trained
on the train split only (evaluation.token_evaluator): fd, precision, recall, density, coverage and, for
class-conditional priors, cond_accuracy. Image datasets are decoded by the VQ-GAN and scored by
FID against an Inception statistics file of the reference images. Conditional priors are sampled
class-balanced (sample i has class i mod C).
"""
import numpy as np
import torch

from evaluation import metrics
from evaluation.image_sets import ImageArray
from evaluation.inception import Inception, resolve_weights
from evaluation.inception_stats import load_stats
from evaluation.token_evaluator import TokenEvaluator
from infra.errors import UserError
from infra.precision import check_precision, inference_precision
from priors import prior_for


def split_arrays(ds):
    """(tokens (N, h, w), labels (N,) or None) of a LatentDataset or a Subset of one."""
    base, rows = (ds.dataset, np.asarray(ds.indices)) if isinstance(ds, torch.utils.data.Subset) else (ds, None)
    tokens = np.asarray(base.tokens if rows is None else base.tokens[rows])
    labels = None if base.labels is None else np.asarray(base.labels if rows is None else base.labels[rows])
    return tokens, labels


class SampleQuality:
    """Draws `nb_samples` with a model and scores them; built once per run, scorer loaded lazily."""

    def __init__(self, cfg, train, evaluation, vqgan=None, log=print):
        self.cfg, self.section, self.vqgan, self.log = cfg, cfg.evaluation, vqgan, log
        self.prior = prior_for(cfg)
        self.train, self.evaluation = train, evaluation
        self._scorer = None

    def check(self, device_type="cpu"):
        """Fail before training for what cannot work later (and train or load the token
        classifier now, not inside an evaluation); say what will not be measured."""
        check_precision(device_type, self.section.precision)
        if self.vqgan is None:
            self._token_scorer()
            return
        load_stats(self.section.reference_stats)  # UserError naming the file when it is not one
        try:
            resolve_weights(self.section.inception_weights)
        except UserError as e:
            self.log(f"note: eval/fid will not be logged: {e}")
            self.section = None

    def labels(self):
        n, classes = self.section.nb_samples, self.cfg.net.num_classes
        return torch.arange(n) % classes if self.cfg.net.conditional else None

    @torch.no_grad()
    def draw(self, model, device, seed):
        """(tokens (N, h, w) on the CPU, mean sampling steps used) of the section's samples."""
        g = torch.Generator(device=device).manual_seed(seed)
        labels, chunks, steps = self.labels(), [], []
        for start in range(0, self.section.nb_samples, self.section.batch_size):
            n = min(self.section.batch_size, self.section.nb_samples - start)
            cond = None if labels is None else labels[start:start + n].to(device)
            with inference_precision(device, self.section.precision):
                result = self.prior.sample(model, tuple(self.cfg.data.latent_shape), self.cfg.sampling,
                                           nb_samples=n, cond=cond, generator=g, device=device)
            chunks.append(result.tokens.cpu())
            steps.append(result.steps_used.cpu())
        return torch.cat(chunks), torch.cat(steps).float().mean().item()

    def measure(self, model, device, seed):
        """{metric: value} of fresh samples of `model`, mean_steps included ({} when there is
        nothing to measure with)."""
        if self.section is None:
            return {}
        tokens, mean_steps = self.draw(model, device, seed)
        scores = self._score_images(tokens) if self.vqgan is not None else self._score_tokens(tokens)
        return {**scores, "mean_steps": mean_steps}

    def _token_scorer(self):
        if self._scorer is None:
            train_tokens, train_labels = split_arrays(self.train)
            eval_tokens, eval_labels = split_arrays(self.evaluation)
            root = self.cfg.data.root or self.cfg.data.train_root
            self._scorer = TokenEvaluator(train_tokens, train_labels, eval_tokens, eval_labels,
                                          self.cfg.data.vocab_size, num_classes=self.cfg.net.num_classes,
                                          cache_dir=root, log=self.log)
        return self._scorer

    def _score_tokens(self, tokens):
        labels = self.labels()
        row = self._token_scorer().score(tokens.numpy(), None if labels is None else labels.numpy())
        keys = ("fd", "precision", "recall", "density", "coverage", "cond_accuracy", "memorisation", "near_copies")
        return {k: row[k] for k in keys if row.get(k) is not None}

    def _score_images(self, tokens):
        if self._scorer is None:
            inception = Inception(self.section.inception_weights, device="cpu")
            self._scorer = (inception, load_stats(self.section.reference_stats))
        inception, reference = self._scorer
        decoded = torch.cat([self.vqgan.decode(chunk.to(next(self.vqgan.parameters()).device)).cpu()
                             for chunk in tokens.split(self.section.batch_size)])
        images = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        features = inception.features(ImageArray(images))
        return {"fid": metrics.fid(features.pool, reference.pool)}
