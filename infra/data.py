"""The training data order and randomness as pure functions of (seed, step, rank), so a resumed
run continues exactly the run it interrupted."""
import torch

from infra.errors import UserError


def step_generator(seed, step, rank, device):
    """The randomness of one training step as a pure function of (seed, step, rank): a resumed
    run draws exactly the corruptions and unroll samples the uninterrupted run would have."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) * 1_009 + rank)
    return g


def loader_generator(seed):
    """The `generator` of a training or evaluation DataLoader. Each `iter()` of a DataLoader draws
    one number (its workers' base seed) from its generator, by default from torch's global RNG,
    which dropout also uses: a resumed run restores that RNG from the checkpoint and then creates
    its iterator, a draw the uninterrupted run made before step 0, and every evaluation draws
    once more. With a generator of their own the loaders leave the global RNG to the training
    steps, and dropout after a resume is what it would have been."""
    return torch.Generator().manual_seed(seed)


# Lightning's note on every mid-epoch resume whose loader lacks state_dict/load_state_dict; a
# StepBatchSampler's loader resumes from trainer.global_step instead (filter it around fit).
RESUME_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"


def check_global_batch(dataset_size, batch_size, world_size=1, what=None):
    """UserError (prefixed by `what`, the setting, when given) when the training split cannot
    fill one global batch; a script checks this before it writes anything."""
    if dataset_size < batch_size * world_size:
        raise UserError(f"{what + ': ' if what else ''}the training split has {dataset_size} rows, fewer than "
                        f"one global batch ({batch_size} x {world_size} processes)")


class StepBatchSampler(torch.utils.data.Sampler):
    """Batches of indices as a pure function of (seed, step, rank).

    Step `s` takes the next `batch_size * world_size` indices of a per-epoch permutation and
    each rank keeps its own slice. Starting at `start_step` therefore resumes exactly where an
    interrupted run stopped, whichever process or machine it restarts on.

    To Lightning the whole run is one epoch of `num_steps` batches, resumed or not: `len()` is
    `num_steps`, and an iterator started at `start_step` yields the rest of that epoch, steps
    `start_step .. num_steps - 1` (what Lightning expects of a resumable loader). On a mid-epoch
    resume Lightning restores its count of the epoch's batches (`start_step`, or fewer in a
    checkpoint of an older run), skips nothing in the loader, and ends the epoch when the count
    reaches `len()`; the run still stops at max_steps, when this iterator is used up. With `len()`
    the number of remaining steps, the epoch ended `start_step` batches before max_steps and the
    next one iterated again from `start_step`: the last steps re-read earlier batches.
    """

    def __init__(self, dataset_size, batch_size, num_steps, seed=0, start_step=0, rank=0, world_size=1):
        check_global_batch(dataset_size, batch_size, world_size)
        self.n, self.batch_size, self.num_steps = dataset_size, batch_size, num_steps
        self.seed, self.start_step, self.rank, self.world = seed, start_step, rank, world_size

    def _permutation(self, epoch):
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def __len__(self):
        return self.num_steps

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


def split_groups(groups, shares, seed=0, min_sizes=None):
    """The one seeded split: row indices -> one sorted index list per share, keeping every group
    (a source image and its flipped copy, say) on one side.

    groups: one hashable key per row (rows with equal keys stay together). shares: relative sizes
    (fractions or counts) of the parts; each part after the first gets round(share / total *
    number of groups) groups, at least its `min_sizes` entry, and the first part the rest (at
    least one group). The order is a seeded permutation of the groups.
    """
    keys = list(dict.fromkeys(groups))  # distinct groups in first-seen order
    total, n = float(sum(shares)), len(keys)
    counts = [round(share / total * n) for share in shares[1:]]
    if min_sizes is not None:
        counts = [max(c, m) for c, m in zip(counts, min_sizes[1:])]
    if sum(counts) > n - 1:
        raise UserError(f"{n} group(s) of rows are too few to split in proportions {list(shares)} "
                        "with at least one in training")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    part_of_key, start = {}, 0
    for part, count in enumerate(counts, start=1):
        part_of_key.update({keys[i]: part for i in order[start:start + count]})
        start += count
    parts = [[] for _ in shares]
    for row, key in enumerate(groups):
        parts[part_of_key.get(key, 0)].append(row)
    return parts
