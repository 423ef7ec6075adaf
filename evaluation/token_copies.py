"""How close samples come to the training grids: exact copies and near copies.

A sample's distance to the train split is the Hamming distance to its nearest training grid (the
number of positions whose tokens differ). `memorisation` is the share of samples at distance 0;
`near_copies` the share within the near-copy threshold d. Exact matching alone has a loophole:
training grids with one token changed are no copies, and score better than held-out real data.
They are near copies.

The threshold comes from real data: d is the largest distance such that at most 1% of the
held-out eval grids have a training grid within d (never below 0: an exact copy is always a near
copy, even where more than 1% of real eval grids repeat a training grid). The eval grids that
chose it thus score a near-copy rate of at most 1%; a model that edits its training grids scores
more. They are the whole eval split, or a seeded subset of CALIBRATION_ROWS when it holds more.
Without an eval split d is a fixed 1/16 of the grid's positions (at least 1): the rule gives
13 of 64 on digits and 164 of 784 on Fashion-MNIST, so 1/16 flags only clear edits.

Nearest distances are exact and chunked. A Hamming distance is the number of positions minus the
number of matches, and the matches of two grids are the dot product of their one-hot encodings
(one column per position and token). Columns that many training grids share (a position's common
tokens, such as MNIST's black background) go through a dense float32 matrix product; the rest
through a sparse one, whose cost is only the pairs that share a rare token. Against Fashion-MNIST's
60,000 train grids of 28x28 on one core, 1000 samples take about 4 s at 256 gray levels and 6 s
at 16; torch.cdist(p=0) takes 20 to 40 s. Memory: the sparse columns of the train split (under
200 MB there) and one chunk of QUERY_CHUNK x TRAIN_CHUNK matches at a time.
"""
import numpy as np
import scipy.sparse
import torch

NEAR_COPY_QUANTILE = 0.01
CALIBRATION_ROWS = 2000
FALLBACK_DIVISOR = 16  # without an eval split, d = positions // 16
# a (position, token) column whose token is at least this share of the train split's grids there
# is cheaper as a dense matrix column than as sparse pairs (measured on Fashion-MNIST at 2, 16
# and 256 gray levels and on uniform random grids)
DENSE_SHARE = 0.1
QUERY_CHUNK = 1024
TRAIN_CHUNK = 8192


class NearestTrainGrid:
    """Hamming distance from any grid to its nearest grid of a fixed set (the train split)."""

    def __init__(self, grids, vocab_size):
        flat = np.asarray(grids).reshape(len(grids), -1)
        self.positions, self.vocab_size = flat.shape[1], int(vocab_size)
        share = np.stack([np.bincount(flat[:, p], minlength=self.vocab_size)
                          for p in range(self.positions)]) / len(flat)  # (positions, vocab)
        dense = share >= DENSE_SHARE
        # dense column id of each (position, token), -1 where the pair goes through the sparse product
        self.dense_id = np.full(share.shape, -1, dtype=np.int64)
        self.dense_id[dense] = np.arange(dense.sum())
        self.dense_columns = int(dense.sum())
        self.train = flat
        self.train_sparse = [self._sparse(flat[j:j + TRAIN_CHUNK]).T.tocsr()
                             for j in range(0, len(flat), TRAIN_CHUNK)]

    def _dense(self, flat):
        """(n, dense columns) float32 one-hot of the dense (position, token) pairs of n grids."""
        ids = self.dense_id[np.arange(self.positions), flat]
        rows, cols = np.nonzero(ids >= 0)
        out = np.zeros((len(flat), self.dense_columns), dtype=np.float32)
        out[rows, ids[rows, cols]] = 1
        return torch.from_numpy(out)

    def _sparse(self, flat):
        """(n, positions * vocab) sparse one-hot of the other pairs of n grids."""
        ids = self.dense_id[np.arange(self.positions), flat]
        rows, cols = np.nonzero(ids < 0)
        return scipy.sparse.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols * self.vocab_size + flat[rows, cols])),
            shape=(len(flat), self.positions * self.vocab_size))

    def distances(self, grids):
        """(N,) int64 Hamming distance of each grid to its nearest training grid."""
        flat = np.asarray(grids).reshape(len(grids), -1)
        out = np.empty(len(flat), dtype=np.int64)
        for i in range(0, len(flat), QUERY_CHUNK):
            query = flat[i:i + QUERY_CHUNK]
            dense, sparse = self._dense(query), self._sparse(query)
            most = torch.zeros(len(query))
            for chunk, train_sparse in zip(range(0, len(self.train), TRAIN_CHUNK), self.train_sparse):
                matches = dense @ self._dense(self.train[chunk:chunk + TRAIN_CHUNK]).T
                matches += torch.from_numpy((sparse @ train_sparse).toarray())
                most = torch.maximum(most, matches.max(1).values)
            out[i:i + QUERY_CHUNK] = self.positions - most.round().long().numpy()
        return out


def near_copy_threshold(eval_distances, quantile=NEAR_COPY_QUANTILE):
    """The largest d >= 0 such that at most `quantile` of the eval grids lie within d of a
    training grid, from their nearest distances: one below the (k+1)-th smallest, k = floor(q n)."""
    ordered = np.sort(np.asarray(eval_distances))
    return max(0, int(ordered[int(quantile * len(ordered))]) - 1)


def calibrate(nearest, eval_grids=None, seed=0):
    """(threshold d, the rule that chose it, in words) for a NearestTrainGrid: from the eval
    grids' nearest distances (a seeded subset of CALIBRATION_ROWS when there are more), else the
    fixed fraction of the grid."""
    if eval_grids is None:
        d = max(1, nearest.positions // FALLBACK_DIVISOR)
        return d, (f"no eval split, so d is a fixed 1/{FALLBACK_DIVISOR} of the {nearest.positions} positions "
                   "(at least 1)")
    rows = len(eval_grids)
    if rows > CALIBRATION_ROWS:
        eval_grids = eval_grids[np.sort(np.random.default_rng(seed).choice(rows, CALIBRATION_ROWS, replace=False))]
    d = near_copy_threshold(nearest.distances(eval_grids))
    return d, (f"d is the largest distance at which at most {NEAR_COPY_QUANTILE:.0%} of {len(eval_grids)} held-out "
               "eval grids lie that close to a train grid (never below 0)")
