"""Training data: the latent splits a config names, and a resumable step-indexed batch order."""
import torch

from sundae.errors import SundaeError
from sundae.latents import LatentDataset, read_meta


def open_splits(cfg, seed=0):
    """(train, eval) datasets of a config's [data] section, checked against its vocab and shape.

    With `root`: the dataset's own eval split when it has one, else a seeded random
    `split_sizes` split of its train split. With `train_root`/`eval_root`: their train splits.
    """
    data = cfg.data
    if data.root is not None:
        meta = read_meta(data.root)
        train = LatentDataset(data.root, "train")
        if "eval" in meta["splits"] and data.split_sizes is None:
            evaluation = LatentDataset(data.root, "eval")
        else:
            sizes = data.split_sizes or [0.95, 0.05]
            n_eval = max(1, round(len(train) * sizes[1] / sum(sizes)))
            if n_eval >= len(train):
                raise SundaeError(f"{data.root}: {len(train)} rows are too few for split_sizes {sizes}")
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
            evaluation = torch.utils.data.Subset(train, sorted(order[:n_eval]))
            train = torch.utils.data.Subset(train, sorted(order[n_eval:]))
    else:
        train = LatentDataset(data.train_root, "train")
        evaluation = LatentDataset(data.eval_root, "train") if data.eval_root else None
        if evaluation is None:
            raise SundaeError("data.eval_root: required with data.train_root")
    for name, ds in (("train", train), ("eval", evaluation)):
        check_dataset_matches(cfg, _base(ds), name)
    return train, evaluation


def _base(ds):
    return ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds


def check_dataset_matches(cfg, ds, name):
    where = f"{ds.root} ({name})"
    if ds.codebook_size != cfg.data.vocab_size:
        raise SundaeError(f"data.vocab_size = {cfg.data.vocab_size} but {where} has codebook size "
                          f"{ds.codebook_size}")
    if tuple(ds.latent_shape) != tuple(cfg.data.latent_shape):
        raise SundaeError(f"latent shape {list(cfg.data.latent_shape)} in the config but "
                          f"{where} holds {list(ds.latent_shape)} grids")
    if cfg.net.conditional:
        if ds.num_classes is None:
            raise SundaeError(f"net.conditional = true but {where} has no class labels")
        if ds.num_classes > cfg.net.num_classes:
            raise SundaeError(f"net.num_classes = {cfg.net.num_classes} but {where} has "
                              f"{ds.num_classes} classes")


class StepBatchSampler(torch.utils.data.Sampler):
    """Batches of indices as a pure function of (seed, step, rank).

    Step `s` takes the next `batch_size * world_size` indices of a per-epoch permutation and
    each rank keeps its own slice. Starting at `start_step` therefore resumes exactly where an
    interrupted run stopped, whichever process or machine it restarts on.
    """

    def __init__(self, dataset_size, batch_size, num_steps, seed=0, start_step=0, rank=0, world_size=1):
        if dataset_size < batch_size * world_size:
            raise SundaeError(f"the training split has {dataset_size} rows, fewer than one global "
                              f"batch ({batch_size} x {world_size} processes)")
        self.n, self.batch_size, self.num_steps = dataset_size, batch_size, num_steps
        self.seed, self.start_step, self.rank, self.world = seed, start_step, rank, world_size

    def _permutation(self, epoch):
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def __len__(self):
        return max(0, self.num_steps - self.start_step)

    def __iter__(self):
        global_batch = self.batch_size * self.world
        per_epoch = self.n // global_batch  # drop the ragged tail of each permutation
        epoch, perm = None, None
        for step in range(self.start_step, self.num_steps):
            if step // per_epoch != epoch:
                epoch = step // per_epoch
                perm = self._permutation(epoch)
            first = (step % per_epoch) * global_batch + self.rank * self.batch_size
            yield perm[first:first + self.batch_size].tolist()


def collate(batch):
    """[(tokens (h, w), label)] -> tokens (B, h, w), labels (B,)."""
    tokens, labels = zip(*batch)
    return torch.stack(tokens), torch.tensor(labels, dtype=torch.long)
