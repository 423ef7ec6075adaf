"""The evaluation harness: how close generated samples are to real data.

    metrics           feature-space metrics: FID/KID/IS through torch-fidelity, precision/recall/
                      density/coverage through prdc, a float64 Fréchet distance for other features
    report            the printed tables (the token table with its notes) and the JSON file
    names             the names evaluate.py's command line offers (importable without torch)

Images (datasets with a VQ-GAN):
    image_sets        what images are read from (folders, ADM .npz, arrays in memory) and the
                      ADM .npz writer
    inception         torch-fidelity's Inception from local weights only, and its features
    inception_stats   statistics files of those features, and their use as a reference cache
    image_metrics     FID, KID, IS and prdc of two feature sets, as evaluate.py reports them

Token grids (datasets without a VQ-GAN: digits, MNIST):
    token_inputs      checks of user-given grids and labels
    token_classifier  the small classifier trained on the train split whose features score
                      grids, and its cache file named by that split
    token_copies      nearest-training-grid Hamming distances: exact copies, near copies and
                      the near-copy threshold chosen on the eval split
    token_evaluator   TokenEvaluator: the metrics of samples beside the reference rows (held-out
                      eval grids, per-position marginals) that say what the numbers mean

It imports third-party libraries and `infra` only.
"""
