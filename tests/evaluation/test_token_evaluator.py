"""Token-space evaluation on scikit-learn's digits: the metrics and reference rows behave, the
table compares at equal n, evaluate.py prints and writes them, mistakes are one line."""
import json

import numpy as np
import pytest

from evaluation import report
from tests.helpers import assert_user_error, run_main


def rows_as_bytes(grids):
    return {np.asarray(g, dtype=np.int64).tobytes() for g in grids}


def test_copies_of_training_grids_are_memorised_and_eval_grids_are_not(evaluator, splits):
    train_tokens, train_labels, eval_tokens, eval_labels = splits[:4]
    copies = evaluator.score(train_tokens[:300], train_labels[:300])
    assert copies["memorisation"] == 1.0 and copies["n"] == 300
    held_out = evaluator.score(eval_tokens, eval_labels)
    train_rows = rows_as_bytes(train_tokens)
    expected = np.mean([np.asarray(g, dtype=np.int64).tobytes() in train_rows for g in eval_tokens])
    assert held_out["memorisation"] == pytest.approx(expected)
    half = np.concatenate([train_tokens[:50], eval_tokens[:50]])
    assert evaluator.score(half)["memorisation"] == pytest.approx(0.5)
    # cond_accuracy is the classifier's agreement with the given labels
    assert held_out["cond_accuracy"] == pytest.approx(evaluator.eval_accuracy)
    shuffled = evaluator.score(eval_tokens, (eval_labels + 1) % 10)
    assert shuffled["cond_accuracy"] < held_out["cond_accuracy"] and shuffled["fd"] == held_out["fd"]


def test_per_position_marginals_score_worse_than_real_held_out_grids(evaluator, splits):
    eval_labels = splits[3]
    n = len(eval_labels)
    for labels in (eval_labels, None):  # class-conditional and pooled marginals, at equal n
        rows = evaluator.reference_rows(n, labels, seed=0)
        real, floor = rows["eval vs train"], rows["marginals"]
        assert real["n"] == floor["n"] == n
        assert floor["fd"] > real["fd"]
        assert floor["precision"] < real["precision"] and floor["density"] < real["density"]
        assert floor["memorisation"] == 0.0


def test_marginal_samples_follow_the_train_frequencies_of_their_class(evaluator, splits):
    train_tokens, train_labels, _, _, vocab, _ = splits
    grids = evaluator.sample_marginals(4000, np.full(4000, 3), seed=1)
    real = train_tokens[train_labels == 3].reshape(-1, 64)
    for p in (0, 20, 27, 36, 63):
        want = np.bincount(real[:, p], minlength=vocab) / len(real)
        got = np.bincount(grids.reshape(-1, 64)[:, p], minlength=vocab) / len(grids)
        assert np.abs(got - want).max() < 0.04
        assert not got[want == 0].any()  # a token never seen there never appears


def test_evaluate_states_n_and_compares_blocks_at_equal_n(evaluator, splits):
    train_tokens, train_labels, eval_tokens, eval_labels = splits[:4]
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 100)  # the demo: 100 per class
    samples = np.stack([train_tokens[rng.choice(np.flatnonzero(train_labels == c))] for c in labels])
    rows = evaluator.evaluate(samples, labels, seed=0)
    m = 10 * np.bincount(eval_labels, minlength=10).min()  # the eval split's rarest class bounds it
    assert {name: row["n"] for name, row in rows.items()} == {
        "samples": 1000, "marginals": 1000, f"samples (n={m})": m, "eval vs train": m, f"marginals (n={m})": m}
    assert rows["marginals"]["fd"] > rows["samples"]["fd"]
    # the samples are training grids: every one an exact and a near copy; real held-out grids rarely near
    assert rows["samples"]["memorisation"] == rows["samples"]["near_copies"] == 1.0
    assert rows["eval vs train"]["near_copies"] <= 0.01 and all("near_copies" in row for row in rows.values())
    table = report.format_token_rows(rows, evaluator.near_copy_threshold, evaluator.near_copy_rule)
    assert f"n={m}" in table and "eval vs train" in table
    assert table.splitlines()[0].split()[-1] == "near_copies"
    assert f"within Hamming distance d = {evaluator.near_copy_threshold} of a train grid" in table
    assert evaluator.near_copy_rule in table
    ratios = report.relative_to_real(rows)  # the class-matched subset against real data, at equal n
    assert ratios["fd"] == rows[f"samples (n={m})"]["fd"] / rows["eval vs train"]["fd"]
    assert ratios["recall"] == rows[f"samples (n={m})"]["recall"] / rows["eval vs train"]["recall"]
    assert f"recall {ratios['recall']:.3f}x" in table

    small = evaluator.evaluate(eval_tokens[:50], eval_labels[:50], seed=0)  # the eval split holds these
    assert list(small) == ["samples", "eval vs train", "marginals"]
    assert {row["n"] for row in small.values()} == {50}
    assert report.relative_to_real(small)["fd"] == small["samples"]["fd"] / small["eval vs train"]["fd"]


def test_evaluate_script_prints_the_table_and_writes_json(evaluator, digits, splits, tmp_path):
    train_tokens, train_labels = splits[:2]
    np.save(tmp_path / "samples.npy", train_tokens[:200].astype(np.int32))
    np.save(tmp_path / "labels.npy", train_labels[:200])
    out = tmp_path / "eval.json"
    proc = run_main("evaluate.py", tmp_path / "samples.npy", "--dataset", digits, "--labels", tmp_path / "labels.npy",
                    "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "trained on this train split" in proc.stdout  # the fixture's cached classifier
    assert f"accuracy on the eval split {evaluator.eval_accuracy:.3f}" in proc.stdout
    for row in ("samples", "eval vs train", "marginals"):
        assert row in proc.stdout
    assert "near_copies" in proc.stdout and evaluator.near_copy_rule in proc.stdout
    result = json.loads(out.read_text())
    assert result["memorisation"] == 1.0 and result["near_copies"] == 1.0 and result["n_samples"] == 200
    assert result["near_copy_threshold"] == {"distance": evaluator.near_copy_threshold,
                                             "rule": evaluator.near_copy_rule}
    assert all("near_copies" in row for row in result["rows"].values())
    assert result["classifier"]["path"] == str(evaluator.classifier_path)
    assert result["fd"] == pytest.approx(evaluator.score(train_tokens[:200], train_labels[:200])["fd"])
    assert set(result["rows"]) >= {"samples", "eval vs train", "marginals"}


@pytest.mark.parametrize("case, fragments", [
    ("out of vocabulary", ["samples.npy", "[0, 17)"]),
    ("negative", ["samples.npy", "[0, 17)"]),
    ("wrong shape", ["samples.npy", "(N, 8, 8)"]),
    ("float tokens", ["samples.npy", "integer"]),
    ("labels of wrong length", ["labels.npy", "(10,)"]),
    ("labels out of range", ["labels.npy", "[0, 10)"]),
    ("missing dataset", ["no-such-dataset", "meta.json"]),
    ("missing samples", ["absent.npy", "no such file"]),
])
def test_token_mistakes_are_one_line_errors(digits, tmp_path, case, fragments):
    grids = np.zeros((10, 8, 8), dtype=np.int64)
    labels = np.zeros(10, dtype=np.int64)
    dataset, samples = digits, tmp_path / "samples.npy"
    if case == "out of vocabulary":
        grids[3, 2, 2] = 17
    elif case == "negative":
        grids[0, 0, 0] = -1
    elif case == "wrong shape":
        grids = np.zeros((10, 8, 7), dtype=np.int64)
    elif case == "float tokens":
        grids = grids.astype(np.float32)
    elif case == "labels of wrong length":
        labels = labels[:9]
    elif case == "labels out of range":
        labels[0] = 10
    elif case == "missing dataset":
        dataset = tmp_path / "no-such-dataset"
    elif case == "missing samples":
        samples = tmp_path / "absent.npy"
    if case != "missing samples":
        np.save(samples, grids)
    np.save(tmp_path / "labels.npy", labels)
    proc = run_main("evaluate.py", samples, "--dataset", dataset, "--labels", tmp_path / "labels.npy")
    assert_user_error(proc, *fragments)
