"""Outputs: an output either appears complete under its final name or not at all, and an output
that cannot be written is a one-line error before any work is spent on it.

Temporary files are named `.<name>.tmp-<pid>-<random>` beside their target, so a write killed
with -9 leaves at most one, which the next write of the same target (or `remove_stale_temps`)
removes once its process is gone.
"""
import contextlib
import errno
import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

from infra.errors import UserError


@contextlib.contextmanager
def atomic_path(path, is_dir=False):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    For a file, an existing `path` is replaced atomically (os.replace). For a directory, an
    existing `path` is removed just before the rename. A write that fails for lack of space or
    permission is a UserError naming `path`; the previous `path` is left as it was.
    """
    path = Path(path)
    writable_dir(path.parent, "output directory")
    remove_stale_temps(path.parent, path.name)
    prefix = f".{path.name}.tmp-{os.getpid()}-"
    try:
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as e:
        raise UserError(f"{path}: cannot be written ({e.strerror})") from None
    # mkdtemp/mkstemp create private (0700/0600) entries; give the result the usual umask mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~umask)
    try:
        yield tmp
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as e:  # disk full, quota, permissions: the old file stays
        why = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or e)
        raise UserError(f"{path}: could not be written ({why}); any earlier version is left as it "
                        "was") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


FULL_DISK_BYTES = 1 << 20  # less free space than this, after a failed write, is a full disk


def disk_full(error, directory):
    """Whether `error`, raised writing into `directory`, is a full disk: an OSError with ENOSPC
    (in it or in its cause), or one of torch's zip-writer RuntimeErrors ("[enforce fail at
    inline_container.cc...] ... file write failed"), which carry no errno, with no space left there."""
    for e in (error, error.__cause__, error.__context__):
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
    text = str(error)
    if "No space left on device" in text:
        return True
    if "inline_container" in text:
        try:
            return shutil.disk_usage(directory).free < FULL_DISK_BYTES
        except OSError:
            return False
    return False


def remove_stale_temps(directory, name="*"):
    """Remove the temporary files of writes (of target `name`, or all) whose process is gone."""
    for tmp in Path(directory).glob(f".{name}.tmp-*"):
        pid = tmp.name.rpartition(".tmp-")[2].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def writable_dir(path, what="output directory", create=True):
    """Check that directory `path` can hold new files, creating it (with its parents) unless
    `create` is off, in which case nothing is made: the nearest existing ancestor must be a
    writable directory. UserError naming the path and why otherwise."""
    path = Path(path)
    if not create:
        if path.exists() and not path.is_dir():
            raise UserError(f"{path}: {what} is a file, expected a directory")
        ancestor = next(p for p in (path, *path.parents) if p.exists())
        if not ancestor.is_dir():
            raise UserError(f"{path}: {what} cannot be made, a parent is a file")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise UserError(f"{path}: {what} is not writable ({ancestor} is read-only)")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except FileExistsError:
        raise UserError(f"{path}: {what} is a file, expected a directory") from None
    except NotADirectoryError:
        raise UserError(f"{path}: {what} cannot be made, a parent is a file") from None
    except OSError as e:
        raise UserError(f"{path}: {what} is not writable ({e.strerror or e})") from None
    return path


def writable_file(path, what="output file", create=True):
    """Check, before any work, that file `path` can be written: its directory is (or can be
    made) writable and `path` itself is not a directory."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: {what} is a directory, expected a file name")
    writable_dir(path.parent, f"directory of the {what}", create)
    return path


def host_and_pid():
    return f"pid {os.getpid()} on {socket.gethostname()}"


def sha256_of(path, chunk=1 << 20):
    """The SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()

