"""The digits dataset and its token evaluator, built once for every token-evaluation test."""
import numpy as np
import pytest

from evaluation.token_evaluator import TokenEvaluator
from latents.dataset import LatentDataset
from tests.helpers import run_main


def quiet(message):
    pass


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation") / "digits"
    proc = run_main("generate-discrete-mnist.py", "digits", root)
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture(scope="session")
def splits(digits):
    """(train tokens, train labels, eval tokens, eval labels, vocabulary, classes) of digits."""
    train, held_out = LatentDataset(digits, "train"), LatentDataset(digits, "eval")
    return (np.asarray(train.tokens), np.asarray(train.labels), np.asarray(held_out.tokens),
            np.asarray(held_out.labels), train.codebook_size, train.num_classes)


@pytest.fixture(scope="session")
def evaluator(digits, splits):
    """Trained once with the default recipe and cached in the dataset's directory, where
    evaluate.py finds it."""
    return TokenEvaluator(*splits, cache_dir=digits, log=quiet)
