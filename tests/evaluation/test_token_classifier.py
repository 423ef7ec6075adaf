"""The token classifier: it sees train rows only, and its cache is named by those rows, reused
whoever asks, never shared by other rows, and never written over a file that is not one."""
import numpy as np
import pytest
import torch

from evaluation import token_classifier
from evaluation.token_evaluator import TokenEvaluator
from infra.errors import UserError
from latents.dataset import LatentDataset
from tests.helpers import assert_user_error, run_main, write_tiny_latents


def rows_as_bytes(grids):
    return {np.asarray(g, dtype=np.int64).tobytes() for g in grids}


@pytest.fixture
def trainings(monkeypatch):
    """Count the classifier trainings, each with a quick recipe: what is tested is which
    evaluators train, not the classifier."""
    calls = []
    real_train = token_classifier.train_classifier

    def counting_train(grids, labels, *args, **kwargs):
        calls.append((np.array(grids), np.array(labels)))
        return real_train(grids, labels, *args, **{**kwargs, "recipe": {"examples": 2000}})

    monkeypatch.setattr(token_classifier, "train_classifier", counting_train)
    return calls


def test_the_classifier_is_trained_on_train_rows_only(splits, trainings):
    train_tokens, train_labels, eval_tokens, eval_labels, vocab, classes = splits
    assert not rows_as_bytes(eval_tokens) & rows_as_bytes(train_tokens)  # digits: no eval row repeats a train row
    evaluator = TokenEvaluator(train_tokens, train_labels, eval_tokens, eval_labels, vocab, classes, log=print)
    assert len(trainings) == 1
    grids, labels = trainings[0]
    np.testing.assert_array_equal(grids, train_tokens)
    np.testing.assert_array_equal(labels, train_labels)
    assert not rows_as_bytes(grids) & rows_as_bytes(eval_tokens)
    assert evaluator.eval_accuracy is not None and 0 <= evaluator.eval_accuracy <= 1
    assert evaluator.classifier_path is None  # no cache_dir: nothing written


def test_the_cached_classifier_is_reused_until_the_train_split_changes(tmp_path, trainings):
    def build(seed, classifier_seed=0):
        data = tmp_path / f"latents-{seed}"
        if not data.exists():
            write_tiny_latents(data, seed=seed)
        train, held_out = LatentDataset(data, "train"), LatentDataset(data, "eval")
        return TokenEvaluator(train.tokens, train.labels, held_out.tokens, held_out.labels, train.codebook_size,
                              train.num_classes, cache_dir=tmp_path / "cache", seed=classifier_seed, log=print)

    first = build(seed=0)
    assert len(trainings) == 1 and first.classifier_path.is_file()
    assert first.classifier_path.parent == tmp_path / "cache"
    again = build(seed=0)
    assert len(trainings) == 1 and again.classifier_path == first.classifier_path
    assert again.eval_accuracy == first.eval_accuracy
    np.testing.assert_array_equal(again.train_features, first.train_features)
    other = build(seed=1)  # another train split: its own file, the first one kept
    assert len(trainings) == 2 and other.classifier_path != first.classifier_path
    assert sorted((tmp_path / "cache").iterdir()) == sorted([first.classifier_path, other.classifier_path])
    build(seed=0)
    assert len(trainings) == 2
    build(seed=0, classifier_seed=1)  # our own cache, trained otherwise: retrained and replaced
    assert len(trainings) == 3 and len(list((tmp_path / "cache").iterdir())) == 2
    build(seed=0, classifier_seed=1)
    assert len(trainings) == 3


def test_different_train_rows_of_one_directory_keep_two_caches(splits, tmp_path, trainings):
    """evaluate.py scores against the whole train split; training scores against the subset it
    trains on (a config's split_sizes): each finds its own classifier, every time."""
    train_tokens, train_labels, eval_tokens, eval_labels, vocab, classes = splits
    whole = (train_tokens, train_labels)
    subset = (train_tokens[:1200], train_labels[:1200])

    def build(rows):
        return TokenEvaluator(*rows, eval_tokens, eval_labels, vocab, classes, cache_dir=tmp_path, log=print)

    paths = [build(rows).classifier_path for rows in (whole, subset)]
    assert len(trainings) == 2 and paths[0] != paths[1]
    assert sorted(tmp_path.glob(f"{token_classifier.CACHE_PREFIX}*.pt")) == sorted(paths)
    for rows, path in zip((whole, subset), paths):
        assert path.name == f"{token_classifier.CACHE_PREFIX}{token_classifier.split_sha256(*rows)[:16]}.pt"
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert [build(rows).classifier_path for rows in (subset, whole)] == paths[::-1]
    assert len(trainings) == 2 and [p.stat().st_mtime_ns for p in paths] == stamps  # read, not rewritten


@pytest.mark.parametrize("content", ["a prior checkpoint", "garbage", "a foreign classifier"])
def test_a_file_at_the_cache_path_that_is_not_a_cache_is_left_byte_identical(splits, tmp_path, trainings, content):
    train_tokens, train_labels = splits[:2]
    path = token_classifier.cache_file(tmp_path, token_classifier.split_sha256(train_tokens, train_labels))
    if content == "a prior checkpoint":
        torch.save({"state_dict": {"w": torch.zeros(3)}, "config": {"net": {}}}, path)
    elif content == "garbage":
        path.write_bytes(b"\x00not a torch file" * 10)
    else:
        torch.save({"format": "another-classifier", "state_dict": {}}, path)
    before = path.read_bytes()
    with pytest.raises(UserError, match="not a token-classifier cache") as error:
        TokenEvaluator(*splits, cache_dir=tmp_path, log=print)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert path.read_bytes() == before and not trainings  # refused before any training


def test_evaluate_never_writes_the_classifier_over_a_file(digits, splits, tmp_path, evaluator):
    """The old --classifier-cache FILE wrote the classifier over FILE, whatever it was."""
    np.save(tmp_path / "samples.npy", splits[0][:20])
    checkpoint = tmp_path / "prior.ckpt"
    torch.save({"state_dict": {"w": torch.arange(4.0)}}, checkpoint)
    before = checkpoint.read_bytes()
    for flag in ("--classifier-cache-dir", "--classifier-cache"):  # the old spelling abbreviates the new
        proc = run_main("evaluate.py", tmp_path / "samples.npy", "--dataset", digits, flag, checkpoint)
        assert_user_error(proc, "--classifier-cache-dir", "prior.ckpt", "is a file")
        assert checkpoint.read_bytes() == before

    cache_dir = tmp_path / "cache"  # a foreign file under the very name the evaluator would choose
    cache_dir.mkdir()
    foreign = cache_dir / evaluator.classifier_path.name
    foreign.write_bytes(before)
    proc = run_main("evaluate.py", tmp_path / "samples.npy", "--dataset", digits, "--classifier-cache-dir", cache_dir)
    assert_user_error(proc, str(foreign), "not a token-classifier cache")
    assert foreign.read_bytes() == before


def test_an_unwritable_cache_directory_evaluates_uncached(splits, tmp_path, monkeypatch, trainings):
    def unwritable(path):
        raise UserError(f"{path.parent}: output directory is not writable (read-only file system)")

    monkeypatch.setattr(token_classifier, "atomic_path", unwritable)
    messages = []
    evaluator = TokenEvaluator(*splits, cache_dir=tmp_path, log=messages.append)
    assert evaluator.classifier_path is None and not list(tmp_path.iterdir())
    assert any("not cached" in m and "read-only" in m for m in messages)
    assert evaluator.score(splits[2][:20])["n"] == 20


def test_training_or_loading_the_classifier_draws_nothing_from_the_global_generators(tmp_path, trainings):
    """A training run scores its samples with this classifier: if finding it in the cache drew
    from torch's global generator (as building a fresh module to load weights into does), the
    prior of a run that found the cache would start from other weights than one that trained it."""
    data = write_tiny_latents(tmp_path / "latents")
    train, held_out = LatentDataset(data, "train"), LatentDataset(data, "eval")
    for expected_trainings in (1, 0):  # trained and cached, then loaded from the cache
        before, np_before = torch.get_rng_state(), np.random.get_state()[1].copy()
        trainings.clear()
        TokenEvaluator(train.tokens, train.labels, held_out.tokens, held_out.labels, train.codebook_size,
                       train.num_classes, cache_dir=tmp_path / "cache", log=print)
        assert len(trainings) == expected_trainings
        assert torch.equal(torch.get_rng_state(), before)
        assert np.array_equal(np.random.get_state()[1], np_before)
