"""The SUNDAE training run on PyTorch Lightning: the module (loss, EMA, evaluation, sample grids)
and its data."""
import dataclasses
import itertools
import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from infra.data import StepBatchSampler, loader_generator, step_generator
from infra.devices import check_compiler
from infra.errors import UserError
from infra.images import save_png
from infra.runs import check_parameters_finite, restore_rng_state, rng_state, stop_if_not_finite
from latents.render import render_tokens
from priors import prior_for
from training.data import collate


def resolve_compile(setting, device, cfg_path, log=print):
    """Whether the training step runs compiled, from [trainer] compile: "auto" is whether
    torch.compile finds a C++ compiler for `device` (said in one line, so a log shows which step
    ran); true without a compiler is a one-line error."""
    if setting == "auto":
        try:
            check_compiler(device, "compile = 'auto'")
        except UserError:
            log("training step: eager ([trainer] compile = 'auto' and torch.compile found no C++ compiler)")
            return False
        log("training step: compiled ([trainer] compile = 'auto' and torch.compile found a C++ compiler)")
        return True
    if setting:
        check_compiler(device, f"{cfg_path}: [trainer] compile = true (set it to false)")
    return setting


def lr_lambda(cfg):
    """Multiplier of the base learning rate at each optimiser step."""
    tr = cfg.trainer

    def factor(step):
        if step < tr.warmup_steps:
            return (step + 1) / tr.warmup_steps
        if tr.lr_scheduler_name == "constant":
            return 1.0
        progress = min(1.0, (step - tr.warmup_steps) / max(1, tr.max_steps - tr.warmup_steps))
        return tr.min_lr_ratio + (1 - tr.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class PriorModule(pl.LightningModule):
    """A prior's model (any [prior] type: priors.base), its EMA, its loss, evaluation and sample
    grids."""

    def __init__(self, cfg, seed=0, run_dir=None, vqgan=None, quality=None):
        super().__init__()
        self.cfg, self.seed, self.quality = cfg, seed, quality
        self.run_dir = Path(run_dir) if run_dir else None
        self.vqgan = [vqgan]  # a list keeps the frozen decoder out of state_dict and .to()
        self.prior = prior_for(cfg)
        self.model = self.prior.build_model()
        decay = cfg.trainer.ema_decay
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
                    if decay > 0 else None)
        if self.ema is not None:
            self.ema.requires_grad_(False)  # updated by averaging, never by the optimiser (or DDP)
        self._ema_started = None  # whether ema.n_averaged > 0, read from it once per process
        self.save_hyperparameters({"config": dataclasses.asdict(cfg), "seed": seed})

    def sampling_model(self):
        return self.ema.module if self.ema is not None else self.model

    def _cond(self, labels):
        return labels if self.cfg.net.conditional else None

    def _loss(self, model, batch, generator, drop_classes=False):
        tokens, labels = batch
        cond = self._cond(labels)
        if drop_classes and cond is not None:  # classifier-free guidance's null class, in training only
            cond = self.prior.drop_classes(cond, generator)
        return self.prior.loss(model, tokens, cond, generator)

    def training_model(self):
        """The denoiser the training steps run: self.model, or with [trainer] compile its
        torch.compile wrapper (the same parameters; kept out of the module's children, so
        checkpoints and the EMA see only self.model)."""
        if self.cfg.trainer.compile is not True:  # False, or "auto" not resolved by train.py
            return self.model
        if "_compiled" not in self.__dict__:
            self.__dict__["_compiled"] = torch.compile(self.model)
        return self.__dict__["_compiled"]

    def training_step(self, batch, batch_idx):
        g = step_generator(self.seed, self.global_step, self.global_rank, self.device)
        out = self._loss(self.training_model(), batch, g, drop_classes=True)
        stop_if_not_finite(out.loss, self.global_step + 1, check_now=self.device.type == "cpu"
                           or self.global_step % self.cfg.trainer.log_frequency == 0)
        # Lightning writes training metrics every log_every_n_steps (log_frequency) steps; logging
        # them on the other steps costs Lightning's bookkeeping every step (and on a GPU a host sync
        # per progress-bar refresh) for values nobody sees. metrics.csv gets the same rows.
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", out.loss, prog_bar=True)
            self.log("train/accuracy", out.accuracy, prog_bar=True)
            self.log_dict({f"train/{k}": v for k, v in out.extra.items()})
            self.log("lr", self.optimizers().param_groups[0]["lr"])
        return out.loss

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        optimizer.step(closure=optimizer_closure)
        # Here, not in on_train_batch_end: checkpoint callbacks run before the module's batch-end
        # hook, so a checkpoint would hold an EMA one update behind its model and a resumed run
        # would lose that update.
        if self.ema is not None:
            self._update_ema()

    @torch.no_grad()
    def _update_ema(self):
        """self.ema.update_parameters(self.model), bit for bit (the same foreach lerp of every
        parameter and buffer, a copy on the first update), without AveragedModel's per-call work:
        a .to() and detach of every tensor, regrouping them by device and dtype, and a host read of
        n_averaged at every step (a GPU sync); that one is read once per process here."""
        averaged = list(itertools.chain(self.ema.module.parameters(), self.ema.module.buffers()))
        current = list(itertools.chain(self.model.parameters(), self.model.buffers()))
        if self._ema_started is None:
            self._ema_started = bool(self.ema.n_averaged > 0)
        decay = self.cfg.trainer.ema_decay
        if not self._ema_started:
            torch._foreach_copy_(averaged, current)
        elif all(t.is_floating_point() for t in averaged):
            torch._foreach_lerp_(averaged, current, 1 - decay)
        else:
            for a, c in zip(averaged, current):
                a.copy_(a * decay + c * (1 - decay))
        self.ema.n_averaged += 1
        self._ema_started = True

    def validation_step(self, batch, batch_idx):
        # A fixed generator per eval batch: successive evaluations see the same corruptions.
        g = step_generator(self.seed + 1, batch_idx, 0, self.device)
        out = self._loss(self.model, batch, g)
        self.log("eval/loss", out.loss, prog_bar=True)
        self.log("eval/accuracy", out.accuracy)
        self.log_dict({f"eval/{k}": v for k, v in out.extra.items()})
        if self.ema is not None:
            g = step_generator(self.seed + 1, batch_idx, 0, self.device)
            ema = self._loss(self.ema.module, batch, g)
            self.log("eval/ema_loss", ema.loss)
            self.log("eval/ema_accuracy", ema.accuracy)
            self.log_dict({f"eval/ema_{k}": v for k, v in ema.extra.items()})

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking or not self.trainer.is_global_zero or self.run_dir is None:
            return
        path = self.run_dir / "samples" / f"step-{self.global_step:07d}.png"
        images = self.sample_grid(path)
        for logger in self.loggers:
            if isinstance(logger, pl.loggers.WandbLogger):
                logger.log_image("samples", [images], step=self.global_step)
        if self.quality is not None and self._quality_due():
            scores = self.quality.measure(self.sampling_model(), self.device, seed=self.seed + 3)
            self.log_dict({f"eval/{k}": float(v) for k, v in scores.items()}, rank_zero_only=True)
            if scores:
                print(f"step {self.global_step}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))

    def _quality_due(self):
        evaluation = self.global_step // self.cfg.trainer.eval_frequency
        return evaluation % self.cfg.evaluation.every == 0 or self.global_step == self.cfg.trainer.max_steps

    @torch.no_grad()
    def sample_grid(self, path):
        """Sample with the EMA weights, render, save as one PNG; returns the grid's images."""
        s = self.cfg.sampling
        n = s.nb_samples
        cond = None
        if self.cfg.net.conditional:  # cycle through the classes
            cond = torch.arange(n, device=self.device) % self.cfg.net.num_classes
        g = torch.Generator(device=self.device).manual_seed(self.seed + 2)
        result = self.prior.sample(self.sampling_model(), tuple(self.cfg.data.latent_shape), s, nb_samples=n,
                                   cond=cond, generator=g, device=self.device)
        images = render_tokens(result.tokens, self.cfg.data.vocab_size, self.vqgan[0])
        save_png(images, path, nrow=max(1, int(math.sqrt(n))))
        return images

    def configure_optimizers(self):
        tr = self.cfg.trainer
        # Decay matrices only: norms, biases and gains keep their scale.
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": tr.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        # One fused kernel for all tensors instead of a Python loop over each (CPU and CUDA). Lightning's
        # mixed-precision plugin refuses gradient clipping with a fused optimizer (it would unscale
        # the gradients itself), so mixed precision takes the foreach kernels instead.
        kernel = {"foreach": True} if "mixed" in str(tr.precision) else {"fused": True}
        opt = torch.optim.AdamW(groups, lr=tr.learning_rate, betas=tuple(tr.betas), **kernel)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.cfg))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        check_parameters_finite(self, self.global_step)
        checkpoint["rng_states"] = rng_state()

    def on_load_checkpoint(self, checkpoint):
        restore_rng_state(checkpoint.get("rng_states"))
        self._ema_started = None  # n_averaged comes from the checkpoint: read it again


class LatentDataModule(pl.LightningDataModule):
    """Train batches in a resumable step order; eval batches in file order."""

    def __init__(self, train, evaluation, batch_size, max_steps, seed=0, num_workers=0):
        super().__init__()
        self.train, self.evaluation = train, evaluation
        self.batch_size, self.max_steps, self.seed, self.num_workers = batch_size, max_steps, seed, num_workers

    def train_dataloader(self):
        # Called after a resumed checkpoint is restored, so global_step is where to continue.
        sampler = StepBatchSampler(len(self.train), self.batch_size, self.max_steps, seed=self.seed,
                                   start_step=self.trainer.global_step, rank=self.trainer.global_rank,
                                   world_size=self.trainer.world_size)
        return torch.utils.data.DataLoader(self.train, batch_sampler=sampler, collate_fn=collate,
                                           num_workers=self.num_workers,
                                           persistent_workers=self.num_workers > 0,
                                           generator=loader_generator(self.seed))

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.evaluation, batch_size=self.batch_size, shuffle=False,
                                           collate_fn=collate, num_workers=self.num_workers,
                                           generator=loader_generator(self.seed))
