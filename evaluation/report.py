"""What the harness prints and writes: a fixed-width table and the JSON file."""
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
