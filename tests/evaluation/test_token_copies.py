"""Exact and near copies: nearest Hamming distances against brute force, the threshold rule, and
the near-copy rate of edited training grids, held-out grids and random grids on digits."""
import numpy as np
import pytest

from evaluation import token_copies
from evaluation.token_copies import NearestTrainGrid, calibrate, near_copy_threshold


def brute_force_distances(queries, train):
    flat_q, flat_t = queries.reshape(len(queries), -1), train.reshape(len(train), -1)
    return np.array([(q != flat_t).sum(1).min() for q in flat_q])


@pytest.mark.parametrize("vocab, dominant", [(2, 0.5), (17, 0.0), (17, 0.8), (256, 0.9)])
def test_nearest_distances_agree_with_brute_force(monkeypatch, vocab, dominant):
    """Dense columns (common tokens), sparse ones (rare tokens) and both, across several chunks."""
    monkeypatch.setattr(token_copies, "QUERY_CHUNK", 7)
    monkeypatch.setattr(token_copies, "TRAIN_CHUNK", 50)
    rng = np.random.default_rng(vocab)

    def grids(n):
        tokens = rng.integers(0, vocab, size=(n, 6, 5))
        return np.where(rng.random(tokens.shape) < dominant, 0, tokens)  # a background token

    train = grids(180)
    near = np.where(rng.random((5, 6, 5)) < 0.1, (train[5:10] + 1) % vocab, train[5:10])
    queries = np.concatenate([grids(20), train[:5], near])
    nearest = NearestTrainGrid(train, vocab)
    distances = nearest.distances(queries)
    np.testing.assert_array_equal(distances, brute_force_distances(queries, train))
    assert (distances[20:25] == 0).all()


def test_the_threshold_is_the_largest_distance_at_which_at_most_one_percent_of_eval_grids_lie():
    # 200 eval grids: at most 2 may lie within d; two lie within 4, a third at 5
    distances = np.array([9] * 197 + [5, 3, 3])
    assert near_copy_threshold(distances) == 4
    assert (distances <= 4).mean() <= 0.01 < (distances <= 5).mean()
    # 150 eval grids: at most 1; the nearest two are at 2 and 4
    assert near_copy_threshold(np.array([4, 2] + [30] * 148)) == 3
    # under 100 grids no eval grid may be a near copy
    assert near_copy_threshold(np.array([6, 8, 12] * 20)) == 5
    # more than 1% exact copies among real grids: exact copies still count, nothing more
    assert near_copy_threshold(np.array([0, 0, 0, 7] + [20] * 96)) == 0


def test_without_an_eval_split_the_threshold_is_a_sixteenth_of_the_grid(splits):
    d, rule = calibrate(NearestTrainGrid(splits[0], splits[4]), None)
    assert d == 64 // 16 and "no eval split" in rule and "1/16 of the 64 positions" in rule
    assert calibrate(NearestTrainGrid(np.zeros((3, 2, 2), np.int64), 2), None)[0] == 1  # at least one token


def test_a_large_eval_split_is_calibrated_on_a_seeded_subset(splits, monkeypatch):
    train_tokens, eval_tokens, vocab = splits[0], splits[2], splits[4]
    monkeypatch.setattr(token_copies, "CALIBRATION_ROWS", 100)
    nearest = NearestTrainGrid(train_tokens, vocab)
    d, rule = calibrate(nearest, eval_tokens, seed=0)
    assert "of 100 held-out eval grids" in rule and calibrate(nearest, eval_tokens, seed=0)[0] == d
    assert d == near_copy_threshold(nearest.distances(
        eval_tokens[np.sort(np.random.default_rng(0).choice(len(eval_tokens), 100, replace=False))]))


def edit_one_token(grids, vocab, seed=0):
    """Each grid with one token, at a random position, changed to another value."""
    rng = np.random.default_rng(seed)
    edited = np.array(grids).reshape(len(grids), -1)
    rows, positions = np.arange(len(edited)), rng.integers(0, edited.shape[1], len(edited))
    edited[rows, positions] = (edited[rows, positions] + rng.integers(1, vocab, len(edited))) % vocab
    return edited.reshape(np.shape(grids))


def test_near_copies_close_the_memorisation_loophole(evaluator, splits):
    train_tokens, train_labels, eval_tokens, eval_labels, vocab, _ = splits
    assert 1 <= evaluator.near_copy_threshold < 64
    assert "of 180 held-out eval grids" in evaluator.near_copy_rule

    edited = edit_one_token(train_tokens[:300], vocab)
    assert (brute_force_distances(edited, train_tokens) == 1).all()
    edits = evaluator.score(edited, train_labels[:300])
    assert edits["memorisation"] == 0.0  # the loophole: no exact copy...
    assert edits["near_copies"] == 1.0  # ...but every one is a near copy

    held_out = evaluator.score(eval_tokens, eval_labels)  # the grids the threshold was chosen on
    assert held_out["near_copies"] <= token_copies.NEAR_COPY_QUANTILE
    distances = brute_force_distances(eval_tokens, train_tokens)
    assert held_out["near_copies"] == pytest.approx((distances <= evaluator.near_copy_threshold).mean())
    assert (distances <= evaluator.near_copy_threshold + 1).mean() > token_copies.NEAR_COPY_QUANTILE  # largest d

    noise = np.random.default_rng(1).integers(0, vocab, size=(1000, 8, 8))
    assert evaluator.score(noise)["near_copies"] == 0.0

    copies = evaluator.score(train_tokens[:100])
    assert copies["memorisation"] == copies["near_copies"] == 1.0
