"""Atomic output: a reader never sees a half-written submission, checkpoint or kernel file.

Also the checks a command makes on its output folder before work starts: that it can be written,
that it has room, that no earlier run would be overwritten, and the clean-up of the temporaries
that a killed process leaves behind.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence


class OutputError(OSError):
    """An output that cannot be written (folder not writable, disk full); the message says how to fix it."""


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    If the body raises, the temporary file is removed and ``path`` keeps its old content; a full
    disk becomes an ``OutputError`` that names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _output_error(path, err) from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp creates the file owner-only; outputs get the usual permissions (0666 less umask).
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _output_error(path, err) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` newlines) to ``path`` atomically and return the path."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return Path(path)


def save_png(figure, path: str | os.PathLike) -> None:
    """A matplotlib figure as a PNG at ``path``, atomically (the run's curves, the learning curve)."""
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def read_npz(path: str | os.PathLike, what: str, make: str) -> dict:
    """The arrays of an ``.npz`` file the kit wrote (no pickles); a missing or unreadable file is one
    line naming ``what`` it should be and ``make``, the command that writes it."""
    import numpy as np  # here, not at the top: the light commands import this module

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; make it with `{make}`")
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{what} {path} is not a readable .npz file ({err}); make it again with `{make}`") from None


def no_space_error(path: Path, detail: str) -> OutputError:
    """The error of a write to ``path`` that ran out of space (``detail``: what the writer said)."""
    free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
    kept = f"{path} keeps its previous content" if path.exists() else f"{path} was not written"
    return OutputError(f"could not write {path}: {detail}; {_mb(free)} free on its disk. "
                       f"Free some space or write elsewhere; {kept}")


def check_writable_dir(folder: str | os.PathLike, option: str = "--out") -> Path:
    """Create ``folder`` if needed and prove a file can be written in it (a probe file: root ignores
    permission bits, so ``os.access`` would say yes to a read-only mount)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} is a file, not a folder; pass a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".kit-write-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"cannot write to {folder} ({err.strerror}); pass a folder you can "
                          f"write to with {option}, or fix its permissions") from None
    return folder


@contextlib.contextmanager
def remove_if_left_empty(folder: str | os.PathLike) -> Iterator[Path]:
    """Around a command's work: when it fails, the folders of ``folder`` that it created (``folder`` and
    the parents that did not exist) are removed again if nothing was written in them, so an early
    failure leaves no empty ``--out`` behind."""
    folder = Path(folder).absolute()
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield folder
    except BaseException:
        for path in created:  # deepest first; stops at the first that holds something
            try:
                path.rmdir()
            except OSError:
                break
        raise


def check_free_space(folder: str | os.PathLike, need_bytes: int, what: str) -> None:
    """Refuse to start work whose ``what`` (e.g. "two checkpoints") would not fit in ``folder``."""
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise OutputError(f"{folder} has {_mb(free)} free, but {what} need about "
                          f"{_mb(need_bytes)}; free some space or pass another --out")


def remove_stale_temporaries(folder: str | os.PathLike, names: Sequence[str]) -> list[Path]:
    """Delete the temporaries ``atomic_output`` left for ``names`` in ``folder`` when a process was
    killed mid-write (kill -9, a hard stop); returns what was removed."""
    stale = [Path(p) for name in names for p in glob.glob(os.path.join(glob.escape(os.fspath(folder)),
                                                                       f".{glob.escape(name)}.*.tmp"))]
    for path in stale:
        path.unlink(missing_ok=True)
    return sorted(stale)


def guard_existing_run(folder: Path, names: Sequence[str], restart: bool) -> Path | None:
    """Refuse to overwrite the run files ``names`` in ``folder``, or with ``restart`` move them into
    ``folder/previous/<timestamp>/`` (returned), so earlier best weights are never lost silently."""
    existing = [name for name in names if (folder / name).exists()]
    if not existing:
        return None
    if not restart:
        raise FileExistsError(f"{folder} already holds a run ({', '.join(existing)}); pass --resume to "
                              f"continue it, --restart to start afresh (the old files are moved to "
                              f"{folder / 'previous'}/), or another --out")
    keep = folder / "previous" / time.strftime("%Y%m%d-%H%M%S")
    keep.mkdir(parents=True, exist_ok=True)
    for name in existing:
        os.replace(folder / name, keep / name)
    return keep


def exit_on_sigterm() -> None:
    """Turn SIGTERM (a notebook's hard stop, ``kill``) into SystemExit, so ``atomic_output`` removes
    its temporary file and the earlier output stays whole (kill -9 cannot be caught)."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _output_error(path: Path, err: OSError) -> OutputError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return no_space_error(path, err.strerror or str(err))
    return OutputError(f"cannot write {path} ({err.strerror}); write it to a folder you can write to")


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:,.0f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:,.1f} kB"
