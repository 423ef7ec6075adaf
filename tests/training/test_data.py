"""Training data: the step-indexed batch order and the train/eval split of a config."""
import dataclasses

import pytest
import torch

from infra.data import StepBatchSampler
from infra.errors import UserError
from latents.dataset import LatentDataset
from tests.helpers import write_tiny_config, write_tiny_latents
from training.config import load_config
from training.data import check_dataset_matches, collate, open_splits


def batches(**kwargs):
    return list(StepBatchSampler(**kwargs))


def test_starting_at_step_k_yields_the_tail_of_the_uninterrupted_order():
    full = batches(dataset_size=50, batch_size=4, num_steps=30, seed=1)
    assert len(full) == 30 and all(len(b) == 4 for b in full)
    for k in (0, 1, 12, 13, 29, 30):  # 12 = 50 // 4: the first step of the second epoch
        sampler = StepBatchSampler(50, 4, 30, seed=1, start_step=k)
        # to Lightning the run is one epoch of 30 batches, of which a resumed loader yields the rest
        assert len(sampler) == 30
        assert list(sampler) == full[k:]


def test_each_epoch_is_a_permutation_and_epochs_reshuffle():
    order = batches(dataset_size=16, batch_size=4, num_steps=12, seed=0)
    epochs = [sum(order[e * 4:(e + 1) * 4], []) for e in range(3)]  # 16 // 4 = 4 steps per epoch
    for epoch in epochs:
        assert sorted(epoch) == list(range(16))
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]


def test_ragged_tail_of_an_epoch_is_dropped():
    order = batches(dataset_size=10, batch_size=3, num_steps=6, seed=0)  # 3 steps per epoch
    for epoch in (order[:3], order[3:]):
        flat = sum(epoch, [])
        assert len(flat) == len(set(flat)) == 9


def test_seed_changes_the_order():
    assert batches(dataset_size=40, batch_size=4, num_steps=5, seed=0) != \
        batches(dataset_size=40, batch_size=4, num_steps=5, seed=1)


def test_two_ranks_get_disjoint_halves_of_each_global_batch():
    single = batches(dataset_size=50, batch_size=8, num_steps=14, seed=3)  # the global batches
    ranks = [batches(dataset_size=50, batch_size=4, num_steps=14, seed=3, rank=r, world_size=2)
             for r in (0, 1)]
    for step in range(14):
        first, second = ranks[0][step], ranks[1][step]
        assert len(first) == len(second) == 4 and not set(first) & set(second)
        assert first + second == single[step]


def test_ranks_resume_at_step_k_too():
    full = batches(dataset_size=50, batch_size=4, num_steps=20, seed=3, rank=1, world_size=2)
    assert batches(dataset_size=50, batch_size=4, num_steps=20, seed=3, rank=1, world_size=2,
                   start_step=7) == full[7:]


def test_dataset_smaller_than_a_global_batch_is_an_error():
    StepBatchSampler(8, 4, 10, world_size=2)  # exactly one global batch is enough
    with pytest.raises(UserError, match=r"7 rows, fewer than one global batch \(4 x 2"):
        StepBatchSampler(7, 4, 10, world_size=2)


def test_collate_stacks_tokens_and_labels():
    tokens, labels = collate([(torch.zeros(2, 3, dtype=torch.long), 1), (torch.ones(2, 3, dtype=torch.long), -1)])
    assert tokens.shape == (2, 2, 3) and labels.tolist() == [1, -1] and labels.dtype == torch.long


# --- open_splits -----------------------------------------------------------------------------

@pytest.fixture
def tiny_cfg(tmp_path):
    return load_config(write_tiny_config(tmp_path))  # latents with 64 train and 16 eval rows


def with_data(cfg, **changes):
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **changes))


def test_uses_the_eval_split_when_present(tiny_cfg):
    train, evaluation = open_splits(tiny_cfg)
    assert isinstance(train, LatentDataset) and train.split == "train" and len(train) == 64
    assert isinstance(evaluation, LatentDataset) and evaluation.split == "eval" and len(evaluation) == 16


def split_rows(cfg, seed):
    train, evaluation = open_splits(cfg, seed=seed)
    assert train.dataset.split == evaluation.dataset.split == "train"
    return list(train.indices), list(evaluation.indices)


def test_split_sizes_split_is_disjoint_seeded_and_keeps_sources_together(tmp_path, tiny_cfg):
    # 64 rows from 32 source images, each followed by its flipped copy (as generate-latents.py writes)
    sources = [f"img{i // 2}.png" for i in range(64)]
    root = write_tiny_latents(tmp_path / "flipped", n_eval=0, sources=sources)
    cfg = with_data(tiny_cfg, root=str(root), split_sizes=[0.75, 0.25])
    train, evaluation = split_rows(cfg, seed=0)
    assert len(train) == 48 and len(evaluation) == 16  # 24 and 8 images
    assert not set(train) & set(evaluation) and sorted(train + evaluation) == list(range(64))
    assert {r // 2 for r in train}.isdisjoint({r // 2 for r in evaluation})  # never a mirror across
    assert split_rows(cfg, seed=0) == (train, evaluation)
    assert split_rows(cfg, seed=1)[1] != evaluation


def test_original_three_way_split_sizes_hold_out_a_test_share(tmp_path, tiny_cfg):
    root = write_tiny_latents(tmp_path / "only-train", n_train=100, n_eval=0)
    train, evaluation = split_rows(with_data(tiny_cfg, root=str(root), split_sizes=[80, 10, 10]), seed=0)
    assert len(train) == 80 and len(evaluation) == 10  # the original's counts: the test rows are unused


def test_a_datasets_own_eval_split_wins_over_split_sizes(tiny_cfg):
    train, evaluation = open_splits(with_data(tiny_cfg, split_sizes=[0.5, 0.5]))
    assert isinstance(evaluation, LatentDataset) and evaluation.split == "eval" and len(train) == 64


def test_without_an_eval_split_the_default_holds_out_five_percent(tmp_path):
    from latents.dataset import create_latent_dataset

    root = tmp_path / "only-train"
    with create_latent_dataset(root, 5, (4, 4), ["a", "b"]) as add_split:
        add_split("train", 40).write(0, torch.zeros(40, 4, 4, dtype=torch.long).numpy(), [0] * 40)
    cfg = with_data(load_config(write_tiny_config(tmp_path)), root=str(root))
    train, evaluation = split_rows(cfg, seed=0)
    assert len(evaluation) == 2 and len(train) == 38


def test_train_root_and_eval_root(tmp_path, tiny_cfg):
    other = write_tiny_latents(tmp_path / "other", n_train=12, n_eval=0)
    cfg = with_data(tiny_cfg, root=None, train_root=str(tmp_path / "latents"), eval_root=str(other))
    train, evaluation = open_splits(cfg)
    assert (len(train), len(evaluation)) == (64, 12)
    assert evaluation.root == other and evaluation.split == "train"
    with pytest.raises(UserError, match="data.eval_root: required"):
        open_splits(with_data(cfg, eval_root=None))


def test_dataset_must_match_the_config(tmp_path, tiny_cfg):
    ds = LatentDataset(tmp_path / "latents")
    with pytest.raises(UserError, match="data.vocab_size = 7 .* codebook size 5"):
        check_dataset_matches(with_data(tiny_cfg, vocab_size=7), ds, "train")
    with pytest.raises(UserError, match=r"latent shape \[2, 8\] in the config"):
        check_dataset_matches(with_data(tiny_cfg, latent_shape=[2, 8]), ds, "train")
    fewer = dataclasses.replace(tiny_cfg, net=dataclasses.replace(tiny_cfg.net, num_classes=1))
    with pytest.raises(UserError, match="net.num_classes = 1 .* 2 classes"):
        check_dataset_matches(fewer, ds, "train")
    unlabelled = write_tiny_latents(tmp_path / "unlabelled", classes=0)
    with pytest.raises(UserError, match="no class labels"):
        check_dataset_matches(tiny_cfg, LatentDataset(unlabelled), "train")
