"""What the harness prints and writes: fixed-width tables, the token evaluation's table with the
notes a reader needs, and the JSON file."""
import json
import math

from infra.files import atomic_path


def _cell(value, digits):
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def format_table(rows, columns, digits=3, first="row"):
    """rows: {row name: {column: value}} -> aligned text; missing or None values print as '-'."""
    header = [first, *columns]
    body = [[name, *(_cell(row.get(c), digits) for c in columns)] for name, row in rows.items()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [[text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in enumerate(zip(line, widths))]
             for line in [header, *body]]
    return "\n".join("  ".join(line).rstrip() for line in lines)


TOKEN_COLUMNS = ("n", "fd", "precision", "recall", "density", "coverage", "cond_accuracy", "memorisation",
                 "near_copies")
RELATIVE_METRICS = ("fd", "precision", "recall", "coverage")


def relative_to_real(rows):
    """{metric: samples / eval-vs-train} at the eval row's n (the class-matched subset when the
    samples are more), for fd, precision, recall and coverage; None without an eval row."""
    real = rows.get("eval vs train")
    if real is None:
        return None
    ours = rows.get(f"samples (n={real['n']})", rows["samples"])
    if ours["n"] != real["n"]:
        return None
    return {k: ours[k] / real[k] for k in RELATIVE_METRICS if real.get(k)}


def format_token_rows(rows, near_copy_threshold, near_copy_rule):
    """The printed table of `TokenEvaluator.evaluate` rows, with what the reader needs to know:
    the ratios to real data, which n each block compares at, and the near-copy threshold."""
    lines = [format_table(rows, TOKEN_COLUMNS, first="")]
    ratios = relative_to_real(rows)
    if ratios:
        lines.append(f"samples / eval vs train at n={rows['eval vs train']['n']}: "
                     + ", ".join(f"{k} {v:.3f}x" for k, v in ratios.items())
                     + " (real data scores 1x; FD lower is better, the others higher)")
    n = rows.get("samples", {}).get("n")
    m = rows.get("eval vs train", {}).get("n")
    if n is not None and m is not None and m < n:
        how = (" in the samples' class proportions" if rows["samples"].get("cond_accuracy") is not None
               else "")
        lines.append(f"The eval split holds only {m} rows{how} (drawn without replacement), so 'eval vs "
                     f"train' is scored at n={m}, beside samples and marginals at n={m}.")
    lines.append(f"near_copies: the share within Hamming distance d = {near_copy_threshold} of a train grid "
                 f"(memorisation: d = 0); {near_copy_rule}.")
    lines.append("Real set: the train split's features. FD falls as n grows: compare rows at equal n only. "
                 "'marginals' (independent per-position tokens) is the floor a model must beat.")
    return "\n".join(lines)


def write_json(path, obj):
    """Write `obj` as indented JSON, atomically (NaN, which JSON lacks, becomes null)."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean(obj), indent=1) + "\n")
