"""VQ-GAN training on PyTorch Lightning: two optimisers, codebook statistics, held-out PSNR.

The module's attributes are those of taming's `VQModel` (encoder, decoder, loss, quantize,
quant_conv, post_quant_conv, in that order), so its checkpoints have taming's state_dict keys:
`load_vqgan` and taming's own code both read them.
"""
from pathlib import Path

import pytorch_lightning as pl
import torch
from einops import rearrange

from infra.data import step_generator
from infra.images import psnr, save_png
from infra.runs import check_parameters_finite, restore_rng_state, rng_state, stop_if_not_finite
from vqgan.diffaug import DiffAugment
from vqgan.losses import VQGANLoss
from vqgan.model import VQGAN
from vqgan.training_config import VQGANTrainConfig


def learning_rate(cfg: VQGANTrainConfig, world_size=1):
    """taming's rule: the base rate times the global batch size (unless training.scale_lr is off)."""
    if not cfg.training.scale_lr:
        return cfg.base_learning_rate
    return cfg.base_learning_rate * cfg.data.batch_size * world_size


def perplexity(counts):
    """exp(entropy) of the code-use distribution: the number of equally used codes it equals."""
    p = counts.double() / counts.sum().clamp_min(1)
    return torch.exp(-(p * p.clamp_min(1e-30).log()).sum())


def pick_latents(z, n, generator):
    """`n` latent vectors drawn (with replacement) from a batch: (B, C, h, w) -> (n, C)."""
    candidates = rearrange(z.float(), "b c h w -> (b h w) c")
    return candidates[torch.randint(len(candidates), (n,), generator=generator, device=z.device)]


@torch.no_grad()
def restart_dead_codes(weight, dead, new_rows, optimizer=None):
    """Move each dead codebook row (weight (n_embed, C), dead (n_embed,) bool) onto a latent the
    encoder actually produces, so it can win the nearest-neighbour search again, and clear its
    Adam moments so the old statistics do not drag it back."""
    weight[dead] = new_rows.to(weight.dtype)
    state = optimizer.state.get(weight, {}) if optimizer is not None else {}
    for name in ("exp_avg", "exp_avg_sq"):
        if name in state:
            state[name][dead] = 0


def step_uncounted(trainer, optimizer):
    """Step `optimizer` through the strategy (so AMP's scaler and DDP behave as for any step)
    without advancing trainer.global_step. Lightning counts every optimizer step in manual
    optimization (Lightning-AI/pytorch-lightning#17958); our global_step counts training steps,
    i.e. generator updates, so max_steps and checkpoint intervals mean what they say."""
    trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None)


class VQGANModule(pl.LightningModule):
    """The autoencoder and its loss (discriminator, optional LPIPS) trained with two Adam
    optimisers; evaluation reports held-out PSNR and L1 and saves reconstruction grids."""

    def __init__(self, cfg: VQGANTrainConfig, seed=0, run_dir=None, perceptual=None, codebook_window=None):
        super().__init__()
        self.automatic_optimization = False  # two optimisers, stepped in training_step
        self.cfg, self.seed = cfg, seed
        self.run_dir = Path(run_dir) if run_dir else None
        tr = cfg.training
        vqgan = VQGAN(cfg.model)
        augment = DiffAugment(translation=tr.diffaug_translation) if tr.diffaug else None
        # taming's VQModel layout, attribute by attribute and in its order: these names are the
        # checkpoint keys. The VQGAN object shares the same modules and gives us its methods.
        self.encoder = vqgan.encoder
        self.decoder = vqgan.decoder
        self.loss = VQGANLoss(cfg.loss, tr.adaptive_weight_max, perceptual, augment)
        self.quantize = vqgan.quantize
        self.quant_conv = vqgan.quant_conv
        self.post_quant_conv = vqgan.post_quant_conv
        self._autoencoder = (vqgan,)  # a tuple: registering it again would duplicate every key
        self.codebook_window = codebook_window or tr.codebook_window or 1
        # code use since the window began; not in state_dict (its keys are taming's), but in
        # the checkpoint (on_save_checkpoint) so a resumed run continues the window
        self.register_buffer("code_counts", torch.zeros(cfg.model.n_embed, dtype=torch.long),
                             persistent=False)
        self._eval = None
        self.save_hyperparameters({"config": cfg.raw, "seed": seed})

    @property
    def autoencoder(self) -> VQGAN:
        return self._autoencoder[0]

    def forward(self, x):
        """(B, 3, H, W) -> (reconstruction, codebook loss, indices (B, h, w), pre-quant latent)."""
        z = self.autoencoder.encode_prequant(x)  # (B, embed_dim, h, w)
        z_q, codebook_loss, indices = self.quantize(z)
        return self.autoencoder.decode_latent(z_q), codebook_loss, indices, z

    # --- training ----------------------------------------------------------------------------

    def training_step(self, x, batch_idx):
        opt_g, opt_d = self.optimizers()
        step = self.global_step  # completed training steps
        recon, codebook_loss, indices, z = self(x)
        disc_on = self.loss.disc_factor(step) > 0
        aug = None
        if disc_on and self.loss.augment is not None:
            g = step_generator(self.seed, step, self.global_rank, self.device)
            aug = self.loss.augment.sample(x.shape[0], x.shape[2], x.shape[3], g, self.device)

        with self.toggled_optimizer(opt_g):  # no gradients into the discriminator here
            gen = self.loss.generator_terms(x, recon, codebook_loss, step,
                                            self.decoder.conv_out.weight, aug)
            stop_if_not_finite(gen.total, step + 1, check_now=self.device.type == "cpu"
                               or step % self.cfg.training.log_every == 0)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(gen.total)
            opt_g.step()
        logs = gen.logs
        if disc_on:
            with self.toggled_optimizer(opt_d):
                # the same augmentation for real and fake; the fake is what the generator made
                # before its update just now
                disc = self.loss.discriminator_terms(x, recon.detach(), step, aug)
                opt_d.zero_grad(set_to_none=True)
                self.manual_backward(disc.total)
                step_uncounted(self.trainer, opt_d)
            logs |= disc.logs
        self.log("train/rec_loss", logs.pop("rec_loss").float(), prog_bar=True, batch_size=x.shape[0])
        self.log_dict({f"train/{k}": v.float() for k, v in logs.items()}, batch_size=x.shape[0])
        self.log("train/disc_factor", float(self.loss.disc_factor(step)), batch_size=x.shape[0])
        self._track_codes(indices, z.detach())

    def _track_codes(self, indices, z):
        """Count code use; at the end of each window log usage and restart dead codes."""
        self.code_counts += torch.bincount(indices.flatten(), minlength=self.code_counts.numel())
        if self.global_step % self.codebook_window:
            return
        counts = self.trainer.strategy.reduce(self.code_counts.clone(), reduce_op="sum")
        used = counts > 0
        stats = {"train/codebook_usage": used.float().mean().item(),
                 "train/codebook_perplexity": perplexity(counts).item()}
        if self.cfg.training.restart_dead_codes:
            stats["train/codes_restarted"] = int((~used).sum())
            self.restart_codes(~used, z)
        self.code_counts.zero_()
        # straight to the loggers: self.log would repeat these once-per-window values at every
        # later logging step until the next window
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(stats, step=self.global_step - 1)

    @torch.no_grad()
    def restart_codes(self, dead, z):
        """Restart the dead codes from this batch's latents (the same on every process)."""
        if not dead.any():
            return
        g = step_generator(self.seed + 1, self.global_step, 0, self.device)
        new_rows = self.trainer.strategy.broadcast(pick_latents(z, int(dead.sum()), g), src=0)
        restart_dead_codes(self.quantize.embedding.weight, dead, new_rows,
                           self.optimizers()[0].optimizer)

    def configure_optimizers(self):
        lr = learning_rate(self.cfg, self.trainer.world_size if self.trainer else 1)
        betas = tuple(self.cfg.training.adam_betas)
        autoencoder = [p for name, p in self.named_parameters() if not name.startswith("loss.")]
        opt_g = torch.optim.Adam(autoencoder, lr=lr, betas=betas)
        opt_d = torch.optim.Adam(self.loss.discriminator.parameters(), lr=lr, betas=betas)
        return [opt_g, opt_d]  # taming's order: optimizer_states[0] is the autoencoder's

    # --- evaluation ---------------------------------------------------------------------------

    def on_validation_epoch_start(self):
        self._eval = {"psnr": 0.0, "l1": 0.0, "n": 0, "originals": [], "recons": [],
                      "counts": torch.zeros_like(self.code_counts)}

    def validation_step(self, x, batch_idx):
        recon, _, indices, _ = self(x)
        recon = recon.float().clamp(-1, 1)
        acc = self._eval
        acc["psnr"] += psnr(x.float(), recon).sum().item()
        acc["l1"] += (x.float() - recon).abs().mean(dim=(1, 2, 3)).sum().item()
        acc["n"] += x.shape[0]
        acc["counts"] += torch.bincount(indices.flatten(), minlength=acc["counts"].numel())
        shown = sum(len(o) for o in acc["originals"])
        keep = max(0, self.cfg.training.recon_images - shown)
        if keep:
            acc["originals"].append(x[:keep].float().cpu())
            acc["recons"].append(recon[:keep].cpu())

    def on_validation_epoch_end(self):
        # every process evaluates all held-out images (no distributed sampler): same numbers
        acc, self._eval = self._eval, None
        if acc is None or acc["n"] == 0:
            return
        metrics = {"eval/psnr": acc["psnr"] / acc["n"], "eval/l1": acc["l1"] / acc["n"],
                   "eval/codebook_usage": (acc["counts"] > 0).float().mean().item()}
        self.log_dict(metrics, sync_dist=True)  # equal on every process; the mean is cheap
        if not self.trainer.is_global_zero:
            return
        print(f"step {self.global_step}: held-out PSNR {metrics['eval/psnr']:.2f} dB, "
              f"L1 {metrics['eval/l1']:.4f}, codebook usage {metrics['eval/codebook_usage']:.1%} "
              f"({acc['n']} images)")
        if acc["originals"] and self.run_dir is not None:
            originals, recons = torch.cat(acc["originals"]), torch.cat(acc["recons"])
            grid = torch.cat([originals, recons])  # top row originals, bottom row reconstructions
            save_png(grid, self.run_dir / "reconstructions" / f"step-{self.global_step:07d}.png",
                     nrow=len(originals))
            for logger in self.loggers:
                if isinstance(logger, pl.loggers.WandbLogger):
                    logger.log_image("reconstructions", [(grid + 1) / 2], step=self.global_step)

    # --- checkpoints --------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint):
        check_parameters_finite(self, self.global_step)
        checkpoint["codebook_counts"] = self.code_counts.cpu()
        checkpoint["rng_states"] = rng_state()

    def on_load_checkpoint(self, checkpoint):
        if "codebook_counts" in checkpoint:
            self.code_counts.copy_(checkpoint["codebook_counts"])
        restore_rng_state(checkpoint.get("rng_states"))
