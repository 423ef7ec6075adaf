"""What a config's data sections name: the latent splits ([data]) and the VQ-GAN decoder ([vqgan])."""
import torch

from infra.data import split_groups
from infra.errors import UserError
from latents.dataset import LatentDataset, read_meta
from vqgan import load_vqgan


def open_splits(cfg, seed=0):
    """(train, eval) datasets of a config's [data] section, checked against its vocab and shape.

    With `root`: the dataset's own eval split when it has one, else a seeded `split_sizes`
    split of its train split that keeps rows of one source image (an image and its flipped
    copy) together. With `train_root`/`eval_root`: their train splits.
    """
    data = cfg.data
    if data.root is not None:
        meta = read_meta(data.root)
        train = LatentDataset(data.root, "train")
        if "eval" in meta["splits"]:
            evaluation = LatentDataset(data.root, "eval")
        else:
            sizes = data.split_sizes or [0.95, 0.05]
            sources = meta["splits"]["train"].get("sources") or [None] * len(train)
            groups = [i if source is None else source for i, source in enumerate(sources)]
            train_rows, eval_rows, *_ = split_groups(groups, sizes, seed, min_sizes=[1, 1, 0][:len(sizes)])
            evaluation = torch.utils.data.Subset(train, eval_rows)
            train = torch.utils.data.Subset(train, train_rows)
    else:
        train = LatentDataset(data.train_root, "train")
        if not data.eval_root:
            raise UserError("data.eval_root: required with data.train_root")
        evaluation = LatentDataset(data.eval_root, "train")
    for name, ds in (("train", train), ("eval", evaluation)):
        check_dataset_matches(cfg, _base(ds), name)
    return train, evaluation


def _base(ds):
    return ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds


def check_dataset_matches(cfg, ds, name):
    where = f"{ds.root} ({name})"
    if ds.codebook_size != cfg.data.vocab_size:
        raise UserError(f"data.vocab_size = {cfg.data.vocab_size} but {where} has codebook size "
                          f"{ds.codebook_size}")
    if tuple(ds.latent_shape) != tuple(cfg.data.latent_shape):
        raise UserError(f"latent shape {list(cfg.data.latent_shape)} in the config but "
                          f"{where} holds {list(ds.latent_shape)} grids")
    if cfg.net.conditional:
        if ds.num_classes is None:
            raise UserError(f"net.conditional = true but {where} has no class labels")
        if ds.num_classes > cfg.net.num_classes:
            raise UserError(f"net.num_classes = {cfg.net.num_classes} but {where} has "
                              f"{ds.num_classes} classes")


def collate(batch):
    """[(tokens (h, w), label)] -> tokens (B, h, w), labels (B,)."""
    tokens, labels = zip(*batch)
    return torch.stack(tokens), torch.tensor(labels, dtype=torch.long)


def load_config_vqgan(cfg, device="cpu"):
    """The VQ-GAN a config's [vqgan] names (None without one), checked against data.vocab_size."""
    if cfg.vqgan is None:
        return None
    vqgan = load_vqgan(cfg.vqgan.config, cfg.vqgan.checkpoint, legacy_cfg=cfg.vqgan.legacy_cfg, device=device)
    if vqgan.codebook_size != cfg.data.vocab_size:
        raise UserError(f"data.vocab_size = {cfg.data.vocab_size} but the VQ-GAN "
                        f"{cfg.vqgan.checkpoint} has {vqgan.codebook_size} codes")
    return vqgan
