r"""Evaluate samples against real data.

Images: FID, KID, IS (torch-fidelity) and precision/recall/density/coverage (prdc, k=5) on the
same Inception features. SAMPLES and REFERENCE are each a folder of images, an .npz in the ADM
layout (arr_0: uint8 N x H x W x 3), or a statistics file written by --save-stats. The Inception
weights are never downloaded: --inception-weights FILE or INCEPTION_WEIGHTS=FILE (where to get
the file: evaluation/inception.py, or the error message without one).

    python evaluate.py samples/ffhq data/ffhq256 --json ffhq.json
    python evaluate.py data/ffhq256 --save-stats ffhq-stats.npz        # a reference, once
    python evaluate.py samples/ffhq ffhq-stats.npz                      # ... compared with
    python evaluate.py samples/ffhq data/ffhq256 --reference-stats ffhq-stats.npz
                       # the same as a cache: reused while data/ffhq256 and the weights are unchanged
    python evaluate.py samples/ffhq --metrics isc                       # IS needs no reference

Token grids of a dataset without a VQ-GAN (digits, MNIST): features of a small classifier
trained on the dataset's train split (cached in DIR/evaluation-classifier-<train split digest>.pt),
exact and near copies of training grids, beside two reference rows, the held-out eval split and
per-position marginals (see evaluation/token_evaluator.py):

    python evaluate.py samples.npy --dataset data/digits [--labels labels.npy] [--json out.json]
"""
import json
from pathlib import Path

import numpy as np

from evaluation.names import IMAGE_METRICS, INCEPTION_FILENAME, WEIGHTS_ENV
from evaluation.report import format_table, format_token_rows, write_json
from evaluation.token_inputs import check_labels, check_token_grids
from infra.cli import ArgumentParser, run_cli
from infra.errors import UserError


def parse_args(argv):
    p = ArgumentParser(__doc__)
    p.add_argument("samples", help="images (folder, ADM .npz, statistics file) or token grids (.npy)")
    p.add_argument("reference", nargs="?", default=None, help="images (folder, ADM .npz, statistics file)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of subsets and reference draws")
    p.add_argument("--sampling-summary", default=None, metavar="summary.json",
                   help="sample.py's summary of the samples: their sampling cost is reported beside the scores")
    images_ = p.add_argument_group("images")
    images_.add_argument("--metrics", nargs="+", choices=IMAGE_METRICS, default=list(IMAGE_METRICS))
    images_.add_argument("--inception-weights", default=None, metavar="FILE",
                         help=f"local {INCEPTION_FILENAME} (default: ${WEIGHTS_ENV}, then the "
                              "torch hub cache)")
    images_.add_argument("--batch-size", type=int, default=64)
    images_.add_argument("--device", default=None, help="default: cuda when available")
    images_.add_argument("--kid-subset-size", type=int, default=1000, help="clamped to the smaller set")
    images_.add_argument("--kid-subsets", type=int, default=100)
    images_.add_argument("--save-stats", default=None, metavar="FILE",
                         help="write SAMPLES' statistics file (features, mean, covariance) and stop")
    images_.add_argument("--reference-stats", default=None, metavar="FILE",
                         help="cache of REFERENCE's statistics: reused while REFERENCE and the weights "
                              "are unchanged (content hashes), else recomputed and rewritten")
    token = p.add_argument_group("token grids")
    token.add_argument("--dataset", default=None, metavar="DIR", help="latent dataset the grids belong to")
    token.add_argument("--labels", default=None, metavar="LABELS.npy", help="(N,) requested class per grid")
    token.add_argument("--classifier-cache-dir", default=None, metavar="CACHE_DIR",
                       help="directory of the token classifier's cache, a file named by the train split's "
                            "digest (default: the dataset DIR)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # torch takes seconds to import: the command line is read first, so that a mistyped flag is
    # reported at once
    from infra.devices import configure_threads
    configure_threads()  # before any torch work: SUNDAE_THREADS / OMP_NUM_THREADS, else 1 (infra/devices.py)
    if args.dataset is not None:
        return evaluate_tokens(args)
    for flag in ("labels", "classifier_cache_dir"):
        if getattr(args, flag) is not None:
            raise UserError(f"--{flag.replace('_', '-')}: only with --dataset (token grids)")
    return evaluate_images(args)


def evaluate_images(args):
    from evaluation import image_metrics, inception, inception_stats
    from infra.devices import default_device, resolve_device

    for flag, value, minimum in (("--kid-subset-size", args.kid_subset_size, 2),
                                 ("--kid-subsets", args.kid_subsets, 1)):
        if value < minimum:
            raise UserError(f"{flag} must be >= {minimum}, got {value}")
    network = inception.Inception(args.inception_weights, resolve_device(args.device or default_device()),
                                  args.batch_size)
    if args.save_stats is not None:
        if args.reference is not None:
            raise UserError("--save-stats writes the statistics of one image set: evaluate.py SET --save-stats FILE")
        features = inception_stats.save_features_of(args.samples, network, args.save_stats)
        print(f"wrote {args.save_stats}: statistics of {len(features)} images of {args.samples}")
        return 0
    if args.reference_stats is not None and args.reference is None:
        raise UserError("--reference-stats caches REFERENCE's statistics; give a REFERENCE")
    wanted = [m for m in IMAGE_METRICS if m in args.metrics]
    if args.reference is None and wanted != ["isc"]:
        raise UserError(f"{', '.join(m for m in wanted if m != 'isc')}: compare with a REFERENCE; give one, "
                        "or ask only --metrics isc")
    samples = inception_stats.load_features(args.samples, network)
    reference = (inception_stats.load_features(args.reference, network, cache=args.reference_stats)
                 if args.reference is not None else None)
    results, notes = image_metrics.image_metrics(samples, reference, wanted, args.kid_subset_size,
                                                 args.kid_subsets, args.seed)

    print(f"samples:   {args.samples} ({results['n_samples']} images)")
    if reference is not None:
        print(f"reference: {args.reference} ({results['n_reference']} images)")
    rows = {"fid": {"fid": {"value": results["fid"]}},
            "kid": {"kid": {"value": results["kid_mean"], "std": results["kid_std"]}},
            "isc": {"isc": {"value": results["isc_mean"], "std": results["isc_std"]}},
            "prdc": {k: {"value": results[k]} for k in ("precision", "recall", "density", "coverage")}}
    print(format_table({name: row for m in wanted for name, row in rows[m].items()}, ("value", "std"), digits=4,
                       first="metric"))
    for note in notes:
        print(f"note: {note}")
    if args.json is not None:
        write_json(args.json, {**results, "samples": str(args.samples), "reference": args.reference,
                               "inception_weights_sha256": samples.weights_sha256, "notes": notes})
        print(f"wrote {args.json}")
    return 0


def _load_npy(path, what):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file ({what})")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable .npy array ({e}); expected {what}") from None


def evaluate_tokens(args):
    from evaluation.token_evaluator import TokenEvaluator
    from latents.dataset import LatentDataset

    if args.reference is not None:
        raise UserError(f"{args.reference}: --dataset compares token grids with the dataset; give no REFERENCE")
    image_flags = {"--save-stats": args.save_stats is not None, "--reference-stats": args.reference_stats is not None,
                   "--inception-weights": args.inception_weights is not None,
                   "--metrics": args.metrics != list(IMAGE_METRICS)}
    for flag, given in image_flags.items():
        if given:
            raise UserError(f"{flag}: is for images; token grids (--dataset) get fd, precision/recall/density/"
                            "coverage, cond_accuracy, memorisation and near_copies")
    train = LatentDataset(args.dataset, "train")
    held_out = LatentDataset(args.dataset, "eval") if "eval" in train.meta["splits"] else None
    samples = _load_npy(args.samples, "(N, h, w) integer token grids, as sample.py --save-latents writes")
    samples = check_token_grids(samples, train.latent_shape, train.codebook_size, args.samples)
    labels = None
    if args.labels is not None:
        if train.num_classes is None:
            raise UserError(f"{args.labels}: the dataset {args.dataset} has no classes")
        labels = check_labels(_load_npy(args.labels, "(N,) integer class labels"), len(samples),
                              train.num_classes, args.labels)
    cache_dir = Path(args.classifier_cache_dir or args.dataset)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise UserError(f"--classifier-cache-dir {cache_dir}: is a file; give a directory (the classifier is "
                        "cached there under a name of its own)")
    evaluator = TokenEvaluator(train.tokens, train.labels, held_out.tokens if held_out is not None else None,
                               held_out.labels if held_out is not None else None, train.codebook_size,
                               train.num_classes, cache_dir=cache_dir)
    rows = evaluator.evaluate(samples, labels, seed=args.seed)

    print(f"token-space evaluation of {args.samples} ({len(samples)} grids"
          f"{', with labels' if labels is not None else ''}) against {args.dataset}")
    print(format_token_rows(rows, evaluator.near_copy_threshold, evaluator.near_copy_rule))
    cost = sampling_cost(args.sampling_summary)
    if args.json is not None:
        cache = evaluator.classifier_path  # None when the directory could not hold it
        write_json(args.json, {**{k: v for k, v in rows["samples"].items() if k != "n"},
                               "n_samples": len(samples), "samples": str(args.samples),
                               "dataset": str(args.dataset), "rows": rows, "sampling": cost,
                               "near_copy_threshold": {"distance": evaluator.near_copy_threshold,
                                                       "rule": evaluator.near_copy_rule},
                               "classifier": {"path": None if cache is None else str(cache),
                                              "eval_accuracy": evaluator.eval_accuracy}})
        print(f"wrote {args.json}")
    return 0


def sampling_cost(path):
    """What sample.py's summary.json says the samples cost; printed, and returned for the JSON."""
    if path is None:
        return None
    try:
        summary = json.loads(Path(path).read_text())
        cost = {"mean_steps_used": summary["mean_steps_used"], "steps": summary["sampling"].get("steps"),
                "steps_histogram": summary["steps_histogram"], "samples_per_second": summary["samples_per_second"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a summary.json of sample.py ({type(e).__name__}: {e})") from None
    if cost["mean_steps_used"] is None:
        raise UserError(f"{path}: records no sampling (a re-run that found every sample written); "
                        "sample into a new --out-dir to measure the sampling cost")
    budget = "" if cost["steps"] is None else f" of at most {cost['steps']}"  # an AR prior has no step budget
    print(f"sampling: mean {cost['mean_steps_used']:.1f}{budget} model calls per sample, "
          f"histogram: {json.dumps(cost['steps_histogram'])}")
    return cost


if __name__ == "__main__":
    run_cli(main)
