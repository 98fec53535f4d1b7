"""Push built kernel folders to Kaggle and stop where Kaggle refuses one.

``python -m kit.push kernels/NAME [kernels/NAME ...]`` runs ``kaggle kernels push -p FOLDER`` for
each folder in turn and reads the client's reply: the kaggle client (2.2.5) prints ``Kernel push
error: ...`` and exits 0 when Kaggle refuses a push (for example "Maximum batch GPU session count
of 2 reached"), so a script calling it goes on as if the push had worked. Here a refusal, an error
or a reply not recognised ends the command with one line and a non-zero exit status, and the
folders after it are not pushed. A folder that attaches other kernels' output (the inference
kernel) is pushed only once each of them has finished, so that it never runs without its weights.

``python -m kit.push --status kernels/NAME ...`` shows ``kaggle kernels status`` of each folder's
kernel instead. Standard library only: the kaggle client runs as a command, as a user runs it.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path
from typing import Sequence

from kit import cli

KAGGLE = "kaggle"
SESSION_LIMIT_HINT = ("Kaggle runs at most 2 GPU sessions at once: wait until one of your running kernels "
                      "has finished (python -m kit.push --status FOLDER) and push this folder again")
# The client's replies (kaggle/api/kaggle_api_extended.py, kernels_push_cli and kernels_status_cli).
_PUSHED = "successfully pushed"
_REFUSED = "Kernel push error:"
_NOT_ATTACHED = "are not valid"  # "The following are not valid kernel sources and could not be added ..."
_STATUS = re.compile(r'has status "(?:KernelWorkerStatus\.)?([A-Za-z_]+)"')
_FINISHED = "COMPLETE"


class PushError(RuntimeError):
    """A push that Kaggle refused or that did not run; the message says what to do."""


def run_client(arguments: Sequence[str]) -> tuple[int, str]:
    """(exit status, stdout and stderr) of ``kaggle ARGUMENTS``."""
    try:
        done = subprocess.run([KAGGLE, *arguments], capture_output=True, text=True)
    except FileNotFoundError:
        raise PushError("the kaggle client is not installed: pip install kaggle, and put your API token "
                        "in ~/.kaggle (https://www.kaggle.com/settings -> API)") from None
    return done.returncode, done.stdout + done.stderr


def kernel_metadata(folder: Path) -> dict:
    """The folder's kernel-metadata.json, as ``python -m kit.build_kernel`` wrote it."""
    path = Path(folder) / "kernel-metadata.json"
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PushError(f"{path}: {error}; pass a folder written by python -m kit.build_kernel") from None
    if not isinstance(metadata, dict) or not metadata.get("id"):
        raise PushError(f"{path} names no kernel ('id'); rebuild it with python -m kit.build_kernel")
    return metadata


def check_push_reply(folder: Path, status: int, reply: str) -> str:
    """The client's success line for ``folder``, or a ``PushError`` saying why it was not pushed."""
    lines = [line.strip() for line in reply.splitlines() if line.strip()]
    refused = [line[len(_REFUSED):].strip() for line in lines if line.startswith(_REFUSED)]
    if refused:
        hint = f"; {SESSION_LIMIT_HINT}" if "session count" in refused[0] else ""
        raise PushError(f"Kaggle refused {folder}: {refused[0]}{hint}")
    if status != 0:
        raise PushError(f"kaggle kernels push -p {folder} failed (exit status {status}): "
                        f"{lines[-1] if lines else 'no output'}")
    unattached = [line for line in lines if _NOT_ATTACHED in line]
    if unattached:
        raise PushError(f"{folder} was pushed and runs now, but {unattached[0]} Its run will fail: push and "
                        "finish those kernels first, then push this folder again")
    pushed = [line for line in lines if _PUSHED in line]
    if not pushed:
        raise PushError(f"kaggle kernels push -p {folder} gave a reply kit.push does not know, so it may not have "
                        f"been pushed: {' / '.join(lines) or 'no output'}")
    return pushed[0]


def kernel_status(kernel: str) -> str:
    """``kaggle kernels status KERNEL``'s reply, e.g. ``user/slug has status "KernelWorkerStatus.RUNNING"``."""
    status, reply = run_client(["kernels", "status", kernel])
    lines = [line.strip() for line in reply.splitlines() if line.strip()]
    if status != 0 or not _STATUS.search(reply):
        raise PushError(f"kaggle kernels status {kernel} failed: {lines[-1] if lines else 'no output'}")
    return " ".join(lines)


def check_sources_finished(folder: Path, metadata: dict) -> None:
    """Refuse to push a kernel before the kernels whose output it attaches have finished."""
    for source in metadata.get("kernel_sources") or []:
        reply = kernel_status(source)
        if _STATUS.search(reply).group(1).upper() != _FINISHED:
            raise PushError(f"{folder} attaches the output of {source}, which has not finished ({reply}); push it "
                            "once that kernel has completed (python -m kit.push --status shows it)")


def push(folder: Path, check_sources: bool = True) -> str:
    """Push one folder; the client's success line, or a ``PushError``."""
    metadata = kernel_metadata(folder)
    if check_sources:
        check_sources_finished(folder, metadata)
    status, reply = run_client(["kernels", "push", "-p", str(folder)])
    print(reply, end="" if reply.endswith("\n") else "\n", flush=True)
    return check_push_reply(folder, status, reply)


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m kit.push",
        description="Push kernel folders with the kaggle client and stop, with an error, where Kaggle refuses one.")
    parser.add_argument("folders", nargs="+", type=Path, metavar="FOLDER",
                        help="kernel folders written by python -m kit.build_kernel, pushed in this order")
    parser.add_argument("--status", action="store_true",
                        help="show each folder's kernel state (kaggle kernels status) instead of pushing")
    parser.add_argument("--no-source-check", action="store_true",
                        help="push a kernel even before the kernels whose output it attaches have finished")
    return parser


def main(args: argparse.Namespace) -> list[str]:
    """Push (or with ``--status`` show) each folder in turn; the client's lines for each."""
    done = []
    try:
        for folder in args.folders:
            if args.status:
                done.append(kernel_status(kernel_metadata(folder)["id"]))
            else:
                done.append(push(folder, check_sources=not args.no_source_check))
            print(done[-1] if args.status else f"kit.push: {folder} pushed", flush=True)
    except PushError as error:
        left = [str(f) for f in args.folders[len(done) + 1:]]
        after = f" (not pushed either: {' '.join(left)})" if left and not args.status else ""
        raise SystemExit(f"kit.push: error: {error}{after}") from None
    return done


if __name__ == "__main__":
    main(get_args_parser().parse_args())
