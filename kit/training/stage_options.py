"""A run's stages as the user asks for them, and the stages' names: ``kit.train``'s stage options,
the kernel builder's and the training notebook's, in one frozen dataclass. Standard library only:
the kernel builder (``python -m kit.build_kernel``) and the notebooks use it without torch.

A run fine-tunes on the competition's images (``FINETUNE``); ``pretrain`` puts LIVECell
pretraining before it (``PRETRAIN``); pseudo-labels (``extra_data`` for one ``kit.train`` call, or a
kernel's ``pseudo_round``) add rounds after it (``pseudo_round_name``). How the stages follow each
other inside a run is ``kit.training.stages``'.
"""
from __future__ import annotations

from dataclasses import dataclass

from kit.cli import DEFAULT_MIN_CONFIDENCE, DEFAULT_PRETRAIN_EPOCHS, parse_pretrain

PRETRAIN = "pretrain"
FINETUNE = "finetune"
PSEUDO = "pseudo-"  # pseudo-label rounds: pseudo-1, pseudo-2, ...
KERNEL_PRETRAIN_MAX_IMAGES = 2000  # a kernel's default: see StageOptions.pretrain_max_images


def pseudo_round_name(number: int) -> str:
    """The name of the ``number``-th pseudo-label round (from 1)."""
    return f"{PSEUDO}{number}"


@dataclass(frozen=True)
class StageOptions:
    """The stages asked for besides fine-tuning, each off by default.

    ``pretrain``: ``"livecell"`` or ``"livecell:LINE,LINE"`` (``kit.cli.parse_pretrain``), LIVECell
    pretraining first, for ``pretrain_epochs`` within ``pretrain_time_limit`` seconds (None: the run's
    time limit) on at most ``pretrain_max_images`` images (None: all; a kernel's default is
    ``KERNEL_PRETRAIN_MAX_IMAGES``, since a split lives on the training device, 2.6 MB an image with its
    flow targets: 2,000 LIVECell images take about 5 GB of each T4's 16 GB under DDP). ``extra_data``:
    ``kit.train``'s pseudo-label CSVs, trained on beside the split. ``pseudo_round`` (a kernel):
    pseudo-labels of ``train_semi_supervised/`` after fine-tuning (``kit.pseudo``, cells from
    ``min_confidence``) and one more stage trained on them.
    """

    pretrain: str | None = None
    pretrain_epochs: int = DEFAULT_PRETRAIN_EPOCHS
    pretrain_max_images: int | None = None
    pretrain_time_limit: float | None = None
    extra_data: tuple[str, ...] = ()
    pseudo_round: bool = False
    min_confidence: float = DEFAULT_MIN_CONFIDENCE

    def checked(self) -> "StageOptions":
        """These options, or a ``ValueError`` naming the first bad one."""
        if self.pretrain is not None:
            parse_pretrain(self.pretrain)
        if self.pretrain_epochs < 1:
            raise ValueError(f"--pretrain-epochs must be >= 1, got {self.pretrain_epochs}")
        if self.pretrain_max_images is not None and self.pretrain_max_images < 1:
            raise ValueError(f"--pretrain-max-images must be >= 1, got {self.pretrain_max_images}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"--min-confidence must be in [0, 1], got {self.min_confidence}")
        return self

    def pretrain_lines(self) -> tuple[str, ...] | None:
        """The LIVECell lines ``pretrain`` names (None: all eight); asked only where it is set."""
        return None if self.pretrain is None else parse_pretrain(self.pretrain)

    def names(self) -> list[str]:
        """The stages a kernel runs for each variant, in order."""
        return [PRETRAIN] * (self.pretrain is not None) + [FINETUNE] + [pseudo_round_name(1)] * self.pseudo_round
