"""Reading VQ-GAN weights from checkpoints without ever executing pickled code.

Accepted: Lightning checkpoints (weights under `state_dict`), bare state_dict files, and
`.safetensors`. Torch files go through `torch.load(weights_only=True)` first. Old Lightning
checkpoints fail there, because their metadata pickles classes (callbacks keyed by
`ModelCheckpoint`, hyper-parameters as `AttributeDict` holding OmegaConf objects); those are
read again through `RestrictedUnpickler`, which only rebuilds tensors and plain containers and
turns every other global into an inert placeholder without importing or calling it.
"""
import collections
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from vqgan.errors import VQGANError

AUTOENCODER_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")


def load_autoencoder_state(path, key_prefix="") -> dict[str, torch.Tensor]:
    """The autoencoder tensors of a checkpoint, keyed relative to the VQGAN module.

    Keys are selected by prefix (`key_prefix` + one of AUTOENCODER_PREFIXES, e.g.
    `first_stage_model.encoder.` in a Net2Net checkpoint); losses, transformers, EMA copies and
    conditioning models are dropped before any tensor is read or copied.
    """
    path = _existing_file(path)

    def wanted(key):
        rest = key[len(key_prefix):]
        return key.startswith(key_prefix) and rest.startswith(AUTOENCODER_PREFIXES)

    if path.suffix == ".safetensors":
        return _read_safetensors(path, wanted, strip=len(key_prefix))
    state_dict = _state_dict_of(_torch_load(path), path)
    return {k[len(key_prefix):]: v for k, v in state_dict.items() if wanted(k)}


def load_state_dict(path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's state_dict (Lightning, bare or safetensors), unfiltered."""
    path = _existing_file(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path, lambda key: True, strip=0)
    return _state_dict_of(_torch_load(path), path)


def read_training_checkpoint(path):
    """A checkpoint of train-vqgan.py for --resume, checked before anything is written: read the
    way Lightning will read it (weights only: tensors and plain containers), with its weights,
    optimiser states, step and seed (`hyper_parameters.seed`). VQGANError, one line, otherwise."""
    path = _existing_file(path)
    checkpoint = _torch_load(path, resuming=True)
    missing = [key for key in ("state_dict", "optimizer_states", "global_step")
               if not isinstance(checkpoint, Mapping) or key not in checkpoint]
    if missing:
        raise VQGANError(f"{path}: not a training checkpoint of train-vqgan.py (no {', '.join(missing)}); "
                         "--resume continues a run from its checkpoints/last.ckpt")
    seed = (checkpoint.get("hyper_parameters") or {}).get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise VQGANError(f"{path}: records no seed (hyper_parameters.seed), so the run it continues "
                         "cannot be repeated; resume from a last.ckpt that train-vqgan.py wrote")
    state = checkpoint["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise VQGANError(f"{path}: its state_dict is not a dict of tensors")
    return checkpoint


def _existing_file(path):
    path = Path(path)
    if not path.is_file():
        raise VQGANError(f"checkpoint not found (or not a file): {path}")
    return path


def _read_safetensors(path, wanted, strip):
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {key[strip:]: f.get_tensor(key) for key in f.keys() if wanted(key)}
    except (OSError, SafetensorError) as e:
        raise VQGANError(f"cannot read checkpoint {path}: {_first_line(e)}") from None


def _torch_load(path, resuming=False):
    """torch.load without running pickled code: a global outside torch's weights-only allow-list
    becomes an inert placeholder, unless `resuming` (Lightning loads the file again, weights only,
    and would fail on it), where it is refused."""
    # memory-map zip checkpoints so a multi-GB file is paged in lazily, and the tensors that
    # are never selected are never read; legacy (pre-1.6) files cannot be mapped
    mmap = zipfile.is_zipfile(path)
    if mmap and _is_torchscript(path):
        # torch.load(weights_only=False) would hand it to torch.jit.load, which runs its code
        raise VQGANError(f"cannot read checkpoint {path}: a TorchScript archive, not a state_dict")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if resuming:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            raise VQGANError(f"{path}: cannot resume from it: it holds "
                             f"{f'an object of {found.group(1)}' if found else 'pickled objects'}, not only "
                             "tensors and plain containers, and is never unpickled; resume from a "
                             "last.ckpt that train-vqgan.py wrote") from None
        # else: retry with placeholders for such globals
    except Exception as e:  # torch reports corrupt files with many exception types
        raise VQGANError(f"cannot read checkpoint {path}: {_first_line(e)}") from None
    try:
        return torch.load(
            path, map_location="cpu", pickle_module=_RestrictedPickle, weights_only=False, mmap=mmap
        )
    except Exception as e:
        raise VQGANError(f"cannot read checkpoint {path}: {_first_line(e)}") from None


def _is_torchscript(path):
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False  # torch.load reports the damage with a better message


def _state_dict_of(checkpoint, path):
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]  # a Lightning checkpoint
    if isinstance(checkpoint, Mapping):
        tensors = {
            k: v for k, v in checkpoint.items()
            if isinstance(k, str) and isinstance(v, torch.Tensor)
        }
        if tensors:
            return tensors
    raise VQGANError(
        f"checkpoint {path} holds no state_dict: expected a Lightning checkpoint with a "
        "'state_dict' entry or a dict of tensors"
    )


def _first_line(error):
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= 200 else line[:200] + "..."


# --- restricted unpickling -------------------------------------------------------------------


class Inert:
    """Stand-in for a global outside the allow-list. Unpickling may construct it, fill it,
    set its state or call it; none of that runs any code of the original class."""

    global_name = "?"

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def __repr__(self):
        return f"<inert {self.global_name}>"


def _tensor_from_storage(storage, storage_offset, size, stride):
    if not isinstance(storage, torch.TypedStorage):
        raise pickle.UnpicklingError("tensor record without a storage")
    # a fresh view of the storage: requires_grad, backward hooks and metadata are dropped.
    # (`_untyped_storage` as torch's own rebuild uses it; the public accessors warn.)
    untyped = storage._untyped_storage
    t = torch.empty((0,), dtype=storage.dtype, device=untyped.device)
    return t.set_(untyped, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *requires_grad_hooks_metadata):
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *requires_grad_hooks_state):
    return data  # a state_dict needs the tensor, not the Parameter wrapper


def _rebuild_from_type(func, new_type, args, state):
    return func(*args)  # `func` itself came through find_class, so it is allowed or inert


_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}

ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Size"): torch.Size,
    **{("torch", name): dtype for name, dtype in _DTYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ALLOWED_GLOBALS; any other global becomes an `Inert` subclass named after
    it, so unpickling never imports a module or calls foreign code. (torch.load resolves
    storage classes itself before asking us.)"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._inert = {}

    def find_class(self, module, name):
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        key = f"{module}.{name}"
        if key not in self._inert:
            self._inert[key] = type("Inert", (Inert,), {"global_name": key})
        return self._inert[key]


class _RestrictedPickle:
    """The part of the `pickle` module interface that torch.load uses as `pickle_module`."""

    __name__ = "vqgan.checkpoint.restricted_pickle"
    Unpickler = RestrictedUnpickler

    @staticmethod
    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()
