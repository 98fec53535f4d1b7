"""Building the Kaggle kernels (``kit.build_kernel``'s library): one folder per training variant (or
group) and one for inference, each a ``kernel-metadata.json`` and a notebook that carries the kit's
source in its cells (``kit_sources``) and calls ``kit.kaggle.notebook``. Standard library only."""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from kit import cli, competition, files
from kit.model import variants
from kit.progress import module_logger
from kit.training.stage_options import FINETUNE, KERNEL_PRETRAIN_MAX_IMAGES, PRETRAIN, StageOptions

logger = module_logger(__name__)

SLUG_PREFIX = "sartorius-kit"
INFERENCE_SLUG = f"{SLUG_PREFIX}-infer"
# The GPU shapes the kit has reason to believe work, with the GPUs a session gets: NvidiaTeslaT4 is
# "GPU T4 x2", Kaggle's default GPU (kaggle-cli PR #1198). Not offered (docs/kaggle.md, "Platform limits and machine shapes"):
# NvidiaTeslaP100, retired (kaggle 2.2.5 swaps it for a T4; Kaggle's torch 2.10+cu128 has no sm_60
# kernels, kaggle-cli #1151), and the L4 / A100 / H100 / RTX Pro 6000 shapes, open only to some
# competitions or to Kaggle's staff (kaggle-cli docs/kernels.md) and never run with the kit.
MACHINE_SHAPES = {"NvidiaTeslaT4": 2}
DEFAULT_MACHINE_SHAPE = "NvidiaTeslaT4"
_NOT_OFFERED = {"NvidiaTeslaP100": "retired: Kaggle runs it on a T4, and Kaggle's torch has no kernels for the "
                                   "P100's sm_60 anyway"}
MAX_GPU_SESSIONS = 2  # Kaggle runs at most this many GPU sessions of one user at once
WEEKLY_GPU_QUOTA_HOURS = 30  # about; it floats from week to week (`kaggle quota` shows yours)
SAVE_MARGIN_SECONDS = 300  # kept back from each variant's share for kit.train's last validation and save
MAX_SESSION_SECONDS = 12 * 3600
MAX_TITLE_LENGTH = 50  # Kaggle's limit on a notebook title
TRAIN_ARGS_ENV = "KIT_TRAIN_ARGS"  # extra kit.train arguments (tests: a tiny CPU run)
INFER_ARGS_ENV = "KIT_INFER_ARGS"  # extra kit.infer arguments
# The builder itself (command and library) is not needed on Kaggle; paths relative to kit/.
_NOT_EMBEDDED = ("build_kernel.py", "kaggle/kernels.py")
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# The README's and the error messages' stand-ins: kernels built with one would push to nobody's account.
_PLACEHOLDER_USERNAMES = ("YOUR_KAGGLE_USERNAME", "USERNAME", "YOU")
_SECRET_ENV = ("KAGGLE_KEY", "KAGGLE_API_TOKEN")


@dataclass(frozen=True)
class Kernel:
    """One kernel to build: its slug, its title, and the variants it trains (inference: whose weights it uses)."""

    slug: str
    title: str
    variants: tuple[str, ...]

    def ref(self, user: str) -> str:
        """``user/slug``, as kernel-metadata.json's ``id`` and ``kernel_sources`` name it."""
        return f"{user}/{self.slug}"


def build_kernels(user: str, groups: Sequence[Sequence[str]], out: str | os.PathLike, *,
                  machine_shape: str = DEFAULT_MACHINE_SHAPE,
                  time_limit_s: int | None = None, use_all_gpus: bool = True,
                  infer: Sequence[str] | None = None, tta: bool = False,
                  stages: StageOptions | None = None) -> list[Path]:
    """Write one folder per training group and one for inference below ``out``; return the folders.

    ``groups``: each a sequence of variant names one training kernel trains in turn (from
    ``parse_variant_groups``). The inference kernel attaches every training kernel's output and
    runs ``kit.infer`` (with flip TTA if ``tta``) on the weights of ``infer`` (default: see
    ``inference_variants``) found there. ``time_limit_s``: each training
    kernel's wall time (default ``cli.DEFAULT_TIME_LIMIT``). ``use_all_gpus``: train through
    DDP where the session has several GPUs (Kaggle's T4 x2), else on one. ``stages``: the training
    kernels' stages besides fine-tuning (default: none; ``kit.training.stage_options.StageOptions``,
    each off by default: nothing here has measured what they bring on Kaggle's GPUs, README "Extra
    data"; LIVECell and ``train_semi_supervised/`` are part of the competition's input, so the kernels
    need no other data source).
    """
    user = check_username(user)
    stages = kernel_stages() if stages is None else stages.checked()
    if time_limit_s is None:
        time_limit_s = cli.parse_time_limit(cli.DEFAULT_TIME_LIMIT)
    _check_session_seconds(time_limit_s, f"{time_limit_s} s")
    check_machine_shape(machine_shape)
    sources = kit_sources()
    trainers = [training_kernel(group) for group in groups]
    slugs = [k.slug for k in trainers]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"two training kernels would share a slug: {slugs}; list each variant once")
    _check_pseudo_round(groups, stages)
    inferred = inference_variants(groups, infer)
    refs = [k.ref(user) for k in trainers if set(k.variants) & set(inferred)]
    trained_by = {name: k.ref(user) for k in trainers for name in k.variants if name in inferred}
    inference = Kernel(INFERENCE_SLUG, "Sartorius kit: infer", tuple(inferred))
    planned = [(kernel_metadata(user, k, machine_shape),
                training_notebook(k, sources, time_limit_s, use_all_gpus, stages)) for k in trainers]
    planned.append((kernel_metadata(user, inference, machine_shape, refs),
                    inference_notebook(inference, sources, refs, tta, select_best(inferred, infer), trained_by)))
    # Everything is rendered and checked before the first file is written: no half-built set.
    rendered = {path: text for metadata, notebook in planned
                for path, text in _render(Path(out), metadata, notebook).items()}
    for path, text in rendered.items():
        _refuse_private(text, path)
    for path, text in rendered.items():
        files.write_text_atomic(path, text)
    built = list(dict.fromkeys(path.parent for path in rendered))
    _remove_stale_kernels(Path(out), built)
    return built


def _remove_stale_kernels(out: Path, built: Sequence[Path]) -> None:
    """Delete the kernel folders of earlier builds that this build no longer makes, so ``out`` holds
    only what the last build pushes. A folder holding more than a build writes is left, and named."""
    for folder in sorted(out.glob(f"{SLUG_PREFIX}-*")):
        if folder in built or not (folder / "kernel-metadata.json").is_file():
            continue
        ours = {folder / "kernel-metadata.json", folder / f"{folder.name}.ipynb"}
        if set(folder.iterdir()) <= ours:
            for path in ours:
                path.unlink(missing_ok=True)
            folder.rmdir()
            logger.info(f"removed {folder}: a kernel of an earlier build, not part of this one")
        else:
            logger.info(f"left {folder}: a kernel of an earlier build, but it holds other files too; delete it by hand")


def kernel_stages(**options) -> StageOptions:
    """A kernel's stage options: at most ``KERNEL_PRETRAIN_MAX_IMAGES`` LIVECell images unless said."""
    return StageOptions(**{"pretrain_max_images": KERNEL_PRETRAIN_MAX_IMAGES, **options}).checked()


def _check_pseudo_round(groups: Sequence[Sequence[str]], stages: StageOptions) -> None:
    """A pseudo-label round needs flow variants: ``kit.pseudo`` takes the cells and their confidence
    from a flow variant's output and refuses a mask variant's weights, which a kernel would otherwise
    find out hours into its run."""
    masks = [name for group in groups for name in group if variants.get_variant(name).target != "flow"]
    if stages.pseudo_round and masks:
        raise ValueError(f"--pseudo-round needs flow variants (kit.pseudo labels cells from a flow variant's "
                         f"output), but the kernels would train mask variant(s) {', '.join(masks)}: build them "
                         "without --pseudo-round, or name only flow variants")


def stage_words(stages: StageOptions) -> str:
    """``"LIVECell pretraining, then fine-tuning, then a pseudo-label round"``: the stages in words."""
    words = {PRETRAIN: "LIVECell pretraining", FINETUNE: "fine-tuning"}
    return ", then ".join(words.get(name, "a pseudo-label round") for name in stages.names())


def resolve_username(user: str | None = None) -> str:
    """``user``, else ``$KAGGLE_USERNAME``, else the ``username`` of the kaggle client's ``kaggle.json``.

    Only the username is read from ``kaggle.json``; the key is never used or copied.
    """
    if user:
        return check_username(user)
    if os.environ.get("KAGGLE_USERNAME"):
        return check_username(os.environ["KAGGLE_USERNAME"])
    for config in _kaggle_json_candidates():
        if config.is_file():
            try:
                name = json.loads(config.read_text(encoding="utf-8")).get("username")
            except (OSError, ValueError, AttributeError) as error:
                raise ValueError(f"cannot read the username from {config}: {error}; pass --user") from None
            if not name:
                raise ValueError(f"{config} has no 'username' field; pass --user")
            return check_username(name)
    raise ValueError("no Kaggle username: pass --user USERNAME, set KAGGLE_USERNAME, or put your "
                     "kaggle.json (https://www.kaggle.com/settings -> API) in ~/.kaggle/")


def check_username(user: str) -> str:
    """``user`` if it can be a Kaggle username (letters, digits, '-' or '_'), else a clear error."""
    if not isinstance(user, str) or not _USERNAME.match(user):
        raise ValueError(f"{user!r} is not a Kaggle username (letters, digits, '-' and '_' only)")
    if user.upper() in _PLACEHOLDER_USERNAMES:
        raise ValueError(f"--user {user} is the README's placeholder: pass your own Kaggle username "
                         "(kaggle.com -> your profile), or leave --user out to read it from kaggle.json")
    return user


def check_machine_shape(shape: str) -> str:
    """``shape`` if the kit offers it (``MACHINE_SHAPES``), else an error saying why not and what to use."""
    if shape in MACHINE_SHAPES:
        return shape
    why = _NOT_OFFERED.get(shape, "not one the kit has been run on, or open only to some competitions")
    raise ValueError(f"machine shape {shape!r}: {why}; use {' or '.join(MACHINE_SHAPES)} (GPU T4 x2)")


def default_variant_groups() -> list[tuple[str, ...]]:
    """What a build trains by default: the flow variants, one kernel each, because the default
    inference kernel uses only them (``inference_variants``). Two kernels run within Kaggle's
    ``MAX_GPU_SESSIONS``; the mask variants are built on request (``--variants all`` or their names)."""
    return [(name,) for name, variant in variants.VARIANTS.items() if variant.target == "flow"]


def parse_variant_groups(tokens: Iterable[str]) -> list[tuple[str, ...]]:
    """``["all"]`` -> one group per variant; ``"a+b"`` -> one kernel training a then b; names checked.

    An unknown name is an error listing the valid ones; a variant named twice is an error.
    """
    groups: list[tuple[str, ...]] = []
    for token in tokens:
        if token == "all":
            groups.extend((name,) for name in variants.VARIANTS)
            continue
        names = tuple(token.split("+"))
        for name in names:
            variants.get_variant(name)  # raises, listing the valid names
        groups.append(names)
    if not groups:
        raise ValueError("no variants given; use --variants all or name some of: " + ", ".join(variants.VARIANTS))
    named = [name for group in groups for name in group]
    repeated = sorted({name for name in named if named.count(name) > 1})
    if repeated:
        raise ValueError(f"variant(s) {repeated} named more than once in --variants")
    return groups


def parse_kernel_time_limit(text: str) -> int:
    """``"H:MM"`` -> seconds; at most 12:00, a Kaggle session's maximum."""
    return _check_session_seconds(cli.parse_time_limit(text), text)


def training_kernel(group: Sequence[str]) -> Kernel:
    """The kernel training ``group``'s variants in turn: slug ``sartorius-kit-train-<names>``.

    A group whose joined names would exceed Kaggle's title length gets a short, stable hash instead.
    """
    words = " ".join(group)
    title = f"Sartorius kit: train {words}"
    if len(title) > MAX_TITLE_LENGTH:
        digest = hashlib.sha256("+".join(group).encode()).hexdigest()[:8]
        title = f"Sartorius kit: train {len(group)} variants {digest}"
    return Kernel(slugify(title), title, tuple(group))


def slugify(title: str) -> str:
    """Kaggle's slug of a title: lower case, runs of other characters than letters/digits -> '-'."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def kernel_metadata(user: str, kernel: Kernel, machine_shape: str,
                    kernel_sources: Sequence[str] = ()) -> dict:
    """kernel-metadata.json for ``kernel``: private, GPU, internet OFF, the competition attached."""
    return {
        "id": kernel.ref(user),
        "title": kernel.title,
        "code_file": f"{kernel.slug}.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        # Stated explicitly: the kaggle client sends internet ON when the field is missing.
        "enable_internet": False,
        "machine_shape": machine_shape,
        "dataset_sources": [],
        "competition_sources": [competition.COMPETITION_SLUG],
        "kernel_sources": list(kernel_sources),
        "model_sources": [],
    }


def kit_sources() -> dict[str, str]:
    """``{path below kit/: source}`` of every kit module the kernels need (all but the builder), the
    stage packages' included, sorted; paths in POSIX form (``data/sartorius.py``).

    Each source ends with a newline, as IPython's ``%%writefile`` writes it.
    """
    root = Path(__file__).resolve().parent.parent
    sources = {}
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        if name in _NOT_EMBEDDED or "__pycache__" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        sources[name] = text if text.endswith("\n") else text + "\n"
    if "__init__.py" not in sources:
        raise FileNotFoundError(f"kit/__init__.py not found in {root}; is the checkout complete?")
    return sources


def training_notebook(kernel: Kernel, sources: dict[str, str], time_limit_s: int,
                      use_all_gpus: bool = True, stages: StageOptions | None = None) -> dict:
    """The notebook training ``kernel.variants`` in turn, sharing ``time_limit_s`` between them, each
    through ``stages`` (default: fine-tuning only)."""
    stages = kernel_stages() if stages is None else stages
    rows = "\n".join(f"| `{name}` | {variants.get_variant(name).description} |" for name in kernel.variants)
    intro = (f"# {kernel.title}\n\nTrains {_listing(kernel.variants)} on the competition's training images "
             f"with `python -m kit.train`, one after another within {_hours(time_limit_s)} in all, and leaves "
             "each variant's weights (`<variant>.pt`), metrics CSV and learning curves in the output. "
             f"Each variant's stages, sharing its time evenly: {stage_words(stages)}.\n\n"
             f"| variant | what differs |\n|---|---|\n{rows}\n\n" + _BUILT_BY)
    settings = (f"VARIANTS = {list(kernel.variants)!r}\n"
                f"TIME_LIMIT_SECONDS = {time_limit_s}  # the whole run, shared by the variants\n"
                f"SAVE_MARGIN_SECONDS = {SAVE_MARGIN_SECONDS}\n"
                f"USE_ALL_GPUS = {use_all_gpus}  # False: train on one GPU even where there are two\n"
                f"PRETRAIN = {stages.pretrain!r}  # 'livecell' or 'livecell:shsy5y,...': LIVECell pretraining first\n"
                f"PRETRAIN_EPOCHS = {stages.pretrain_epochs}\n"
                f"PRETRAIN_MAX_IMAGES = {stages.pretrain_max_images!r}  # None: all of LIVECell's train + val images\n"
                f"PSEUDO_ROUND = {stages.pseudo_round}  # True: pseudo-labels of train_semi_supervised/, one more stage\n"
                f"MIN_CONFIDENCE = {stages.min_confidence!r}  # a pseudo-labelled cell's mean cell probability\n")
    call = ("\nfrom kit.kaggle import notebook\nfrom kit.training.stage_options import StageOptions\n\n"
            "STAGES = StageOptions(pretrain=PRETRAIN, pretrain_epochs=PRETRAIN_EPOCHS,\n"
            "                      pretrain_max_images=PRETRAIN_MAX_IMAGES, pseudo_round=PSEUDO_ROUND,\n"
            "                      min_confidence=MIN_CONFIDENCE)\n"
            "notebook.train_variants(VARIANTS, STARTED + TIME_LIMIT_SECONDS, data_root=INPUT, working=WORKING,\n"
            "                        use_all_gpus=USE_ALL_GPUS, save_margin_s=SAVE_MARGIN_SECONDS,\n"
            f"                        train_args=notebook.extra_args({TRAIN_ARGS_ENV!r}), stages=STAGES)\n")
    return _notebook([_markdown(intro), *_kit_cells(sources), _code(settings + call)])


def inference_notebook(kernel: Kernel, sources: dict[str, str], kernel_refs: Sequence[str],
                       tta: bool = False, select: bool = False, trained_by: dict[str, str] | None = None) -> dict:
    """The notebook writing ``submission.csv`` with ``kit.infer`` from ``kernel.variants``' weights
    (averaged, or with ``select`` the one with the best validation score among those attached).
    ``trained_by``: the kernel that trains each variant, named where its weights are missing."""
    weight_names = [f"{name}.pt" for name in kernel.variants]
    trained_by = trained_by or {}
    weight_sources = {f"{name}.pt": trained_by[name] for name in kernel.variants if name in trained_by}
    how = " (averaged)" if len(weight_names) > 1 else ""
    if select:
        how = (" (it uses the one whose kit.tune validation score is highest, among those attached: one "
               "attached kernel is enough)")
    intro = (f"# {kernel.title}\n\nFinds {_listing(weight_names)}{how} among the inputs (the output of "
             f"{_listing(kernel_refs)}), runs `python -m kit.infer`{' with flip TTA' if tta else ''} on the "
             "competition's test images and leaves `submission.csv`, validated, in the working folder.\n\n"
             + _BUILT_BY)
    settings = (f"WEIGHT_FILES = {weight_names!r}\n"
                f"WEIGHT_KERNELS = {list(kernel_refs)!r}  # attached as kernel_sources\n"
                f"WEIGHT_SOURCES = {weight_sources!r}  # the kernel whose output holds each weights file\n"
                f"INFER_OPTIONS = {(['--tta'] if tta else []) + (['--select-best'] if select else [])!r}\n")
    call = ("\nfrom kit.kaggle import notebook\n\n"
            "notebook.write_submission(WEIGHT_FILES, WEIGHT_KERNELS, input_root=INPUT, working=WORKING,\n"
            f"                          infer_options=INFER_OPTIONS + notebook.extra_args({INFER_ARGS_ENV!r}),\n"
            "                          weight_sources=WEIGHT_SOURCES)\n")
    return _notebook([_markdown(intro), *_kit_cells(sources), _code(settings + call)])


def inference_variants(groups: Sequence[Sequence[str]], infer: Sequence[str] | None = None) -> list[str]:
    """The variants whose weights the inference kernel uses, in training order.

    By default: every trained flow variant, of which the kernel uses the one that ``kit.tune``
    scored best on the validation split (``select_best``), else every trained mask variant,
    averaged. ``infer`` names them instead, averaged; each must be trained by one of ``groups`` and
    all must share a target (``kit.infer`` averages weights of one target type only).
    """
    trained = [name for group in groups for name in group]
    if infer is None:
        by_target = {target: [name for name in trained if variants.get_variant(name).target == target]
                     for target in ("flow", "mask")}
        chosen = by_target["flow"] or by_target["mask"]
    else:
        missing = [name for name in infer if name not in trained]
        if missing:
            raise ValueError(f"--infer {missing}: not trained by these kernels (--variants trains {trained})")
        chosen = [name for name in trained if name in infer]
    targets = {name: variants.get_variant(name).target for name in chosen}
    if len(set(targets.values())) > 1:
        raise ValueError(f"kit.infer averages weights of one target type, but --infer mixes {targets}; "
                         "name only mask variants or only the flow variant")
    return chosen


def select_best(chosen: Sequence[str], infer: Sequence[str] | None) -> bool:
    """Whether the inference kernel picks one of ``chosen`` by its validation score (``kit.infer
    --select-best``) instead of averaging them: by default, among several flow variants, each tuned
    by its training kernel on the same validation split. Which wins depends on the training run
    (README, "Model quality"), so the kernel measures it instead of assuming it."""
    return infer is None and len(chosen) > 1 and variants.get_variant(chosen[0]).target == "flow"


def push_plan(folders: Sequence[Path], time_limit_s: int, machine_shape: str = DEFAULT_MACHINE_SHAPE) -> list[str]:
    """What a build costs and how to push it: the GPU ceiling of its training kernels, then the
    pushes in order (``python -m kit.push``, which stops on a refused push), at most
    ``MAX_GPU_SESSIONS`` training kernels at a time, the inference kernel (the last folder) after them.

    The ceiling is in session-hours (hours a GPU session runs, each training kernel stopping itself at
    ``time_limit_s``), and in GPU-hours if Kaggle counts each GPU of a session: which of the two its
    weekly quota counts is unverified (docs/kaggle.md, "Build").
    """
    *trainers, inference = folders
    hours = len(trainers) * time_limit_s / 3600
    gpus = MACHINE_SHAPES[machine_shape]
    lines = [f"GPU ceiling: {len(trainers)} training kernel(s) x {_hours(time_limit_s)} = {hours:.1f} session-hours "
             f"on {machine_shape} (GPU T4 x{gpus}; {hours * gpus:.1f} GPU-hours if Kaggle counts each GPU), of a "
             f"weekly GPU quota of about {WEEKLY_GPU_QUOTA_HOURS} h (`kaggle quota` shows yours); the inference "
             "kernel's run on the visible test images adds minutes"]
    if hours > WEEKLY_GPU_QUOTA_HOURS:
        lines.append(f"warning: {hours:.1f} session-hours is more than a week's GPU quota: build fewer variants "
                     "(the default builds the two the inference kernel uses) or lower --time-limit")
    elif hours * gpus > WEEKLY_GPU_QUOTA_HOURS:
        fits = _hours(int(WEEKLY_GPU_QUOTA_HOURS * 3600 / (len(trainers) * gpus)) // 60 * 60)
        lines.append(f"note: if Kaggle counts each GPU, that is more than a week's quota; --time-limit "
                     f"{fits.removesuffix(' h')} fits either way")
    lines.append(f"push in this order (Kaggle runs at most {MAX_GPU_SESSIONS} GPU sessions at once; "
                 "`python -m kit.push` stops with an error where Kaggle refuses a push):")
    batches = [trainers[i:i + MAX_GPU_SESSIONS] for i in range(0, len(trainers), MAX_GPU_SESSIONS)]
    for step, batch in enumerate(batches, 1):
        after = " once the previous ones have finished:" if step > 1 else ""
        lines.append(f"  {step}.{after} python -m kit.push {' '.join(map(str, batch))}")
    lines.append(f"  {len(batches) + 1}. once every training kernel has finished (kit.push checks): "
                 f"python -m kit.push {inference}")
    lines.append(f"their state: python -m kit.push --status {' '.join(map(str, folders))}")
    return lines


# --- the notebook's bootstrap: it makes the embedded kit importable; the rest is kit.kaggle.notebook ---

_BUILT_BY = ("Built by `python -m kit.build_kernel`: the kit's modules are embedded below and written to a "
             "scratch folder, so nothing is installed and the internet stays off.")

_SETUP_CELL = '''\
# The kit travels inside this notebook. The next cells write its modules to a scratch folder outside
# the working folder (so the source does not become part of this kernel's output); the cell after
# them checks every file against the SHA-256 recorded when the notebook was built.
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.monotonic()
KIT_SRC = Path(tempfile.mkdtemp(prefix="kit-src-"))
KIT_FILES = {
__DIGESTS__}
for name in KIT_FILES:  # the package and its stage folders, for %%writefile to write into
    (KIT_SRC / "kit" / name).parent.mkdir(parents=True, exist_ok=True)
'''

_IMPORT_CELL = '''\
written = sorted(path.relative_to(KIT_SRC / "kit").as_posix() for path in (KIT_SRC / "kit").rglob("*.py"))
if written != sorted(KIT_FILES):
    raise RuntimeError(f"the source cells wrote {written}, expected {sorted(KIT_FILES)}; rebuild this "
                       "notebook with `python -m kit.build_kernel`")
changed = [name for name, digest in KIT_FILES.items()
           if hashlib.sha256((KIT_SRC / "kit" / name).read_bytes()).hexdigest() != digest]
if changed:
    raise RuntimeError(f"kit files {changed} differ from the built notebook's; rebuild it")
sys.path.insert(0, str(KIT_SRC))
# Child processes (python -m kit.train / kit.infer) import the same copy.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(KIT_SRC), os.environ.get("PYTHONPATH")]))
import kit
from kit import paths

if Path(kit.__file__).parent != KIT_SRC / "kit":
    raise RuntimeError(f"imported kit from {kit.__file__}, not from the embedded copy in {KIT_SRC}")
INPUT = paths.input_root()
WORKING = paths.working_dir()
WORKING.mkdir(parents=True, exist_ok=True)
print(f"kit loaded from {KIT_SRC}; inputs below {INPUT}; outputs to {WORKING}")
'''


_VERSIONS_CELL = """\
# First, before anything else runs: the library versions of this session, and a one-line stop where one
# is older than the kit supports (kit/kaggle/compat.py, run here as it is embedded below).
"""


def _kit_cells(sources: dict[str, str]) -> list[dict]:
    """The version check (``kit.kaggle.compat``'s source and its call), the setup cell (with the files'
    digests), one ``%%writefile`` cell per module, the import cell."""
    digests = "".join(f"    {name!r}: {hashlib.sha256(text.encode('utf-8')).hexdigest()!r},\n"
                      for name, text in sources.items())
    cells = [_code(_VERSIONS_CELL + sources["kaggle/compat.py"] + "\ncheck_environment()\n")]
    cells += [_code(_SETUP_CELL.replace("__DIGESTS__", digests))]
    cells += [_code(f"%%writefile {{KIT_SRC}}/kit/{name}\n{text}") for name, text in sources.items()]
    cells += [_code(_IMPORT_CELL)]
    return cells


def _notebook(cells: list[dict]) -> dict:
    """An nbformat 4.5 notebook for a python3 kernel; cell ids are positional, so builds repeat exactly."""
    for index, cell in enumerate(cells):
        cell["id"] = f"cell-{index:03d}"
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _code(text: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
            "source": text.splitlines(keepends=True)}


def _markdown(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text.splitlines(keepends=True)}


def _render(out: Path, metadata: dict, notebook: dict) -> dict[Path, str]:
    """``{path: text}`` of one kernel folder ``out/<slug>/``: kernel-metadata.json and the notebook."""
    folder = out / metadata["id"].split("/", 1)[1]
    return {
        folder / "kernel-metadata.json": json.dumps(metadata, indent=2) + "\n",
        folder / metadata["code_file"]: json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
    }


def _refuse_private(text: str, where: Path) -> None:
    """A credential or a local path in a kernel would be published with it: refuse to write one."""
    for variable in _SECRET_ENV:
        secret = os.environ.get(variable, "")
        if len(secret) >= 8 and secret in text:
            raise ValueError(f"{where} would contain the value of ${variable}; not writing it")
    checkout = str(Path(__file__).resolve().parent.parent)
    for private in {str(Path.home()), checkout}:
        if private != "/" and re.search(re.escape(private) + r"(?![A-Za-z0-9_.-])", text):
            raise ValueError(f"{where} would contain the local path {private}; remove it from the kit's source")


def _check_session_seconds(seconds: int, shown: str) -> int:
    """``seconds``, if a Kaggle session can run that long; ``shown`` is how the caller wrote it."""
    if not 0 < seconds <= MAX_SESSION_SECONDS:
        raise ValueError(f"time limit {shown} must be more than 0:00 and at most 12:00 (Kaggle's session limit)")
    return seconds


def _kaggle_json_candidates() -> list[Path]:
    """Where the kaggle client looks for kaggle.json: $KAGGLE_CONFIG_DIR, ~/.kaggle, then XDG."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return [Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"]
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [Path.home() / ".kaggle" / "kaggle.json", xdg / "kaggle" / "kaggle.json"]


def _listing(items: Sequence[str]) -> str:
    quoted = [f"`{item}`" for item in items]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _hours(seconds: int) -> str:
    return f"{cli.format_time_limit(seconds)} h"
