"""Local validation (``kit.validate``'s library): a submission for annotated images scored exactly as
the leaderboard scores, over a stated set of images (the weights' validation split, every annotated
image, or ids), with per-image scores and overlays of the worst images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from kit import metrics, rle
from kit.data import sartorius
from kit.files import atomic_output, check_writable_dir, write_text_atomic
from kit.inference.ensemble import split_records
from kit.progress import module_logger
from kit.split import DEFAULT_SEED, DEFAULT_VAL_FRACTION, Split, of_weights, present
from kit.submission import read_submission, validate

TRUTH_COLOUR = (0, 220, 0)  # BGR green
PRED_COLOUR = (255, 0, 255)  # BGR magenta
_TITLE_HEIGHT = 26

logger = module_logger(__name__)


@dataclass(frozen=True)
class ValidateConfig:
    """One scoring as the command line asks for it, built once by ``kit.validate.validate_config``."""

    submission: Path
    data: Path | None = None
    split: str = "val"  # "val" or "train"
    ids: tuple[str, ...] | None = None  # score exactly these instead
    weights: tuple[Path, ...] = ()  # the weights that made the submission: their validation split
    overlays: int = 8  # overlay PNGs of the N worst images
    overlay_dir: Path | None = None  # default: overlays/ beside the submission


def run(config: ValidateConfig) -> metrics.ScoreReport:
    """Validate and score the submission, print the tables, write per-image scores and overlays."""
    layout = sartorius.find_competition(config.data, need_test=False)
    train = sartorius.read_train_csv(layout.train_csv)
    submission = read_submission(config.submission)
    validate(config.submission, submission["id"].unique())
    held_out = weights_split(list(config.weights), sartorius.image_table(train))
    stated, what = _stated_ids(train, config.split, None if config.ids is None else list(config.ids),
                               layout.train_csv, held_out)
    missing, unscored = _compare_ids(stated, submission, config.submission, train, what)
    out_dir = check_writable_dir(config.overlay_dir or config.submission.parent / "overlays", "--overlay-dir")
    # The solution holds every stated image: one the submission lacks is scored without predictions (0).
    report = metrics.score_report(train[train["id"].isin(stated)], submission[submission["id"].isin(stated)])
    scores_csv = write_text_atomic(out_dir / "scores.csv", report.per_image.to_csv(index=False, float_format="%.6f"))
    print(_summary(report, config.submission, what, missing, unscored, scores_csv))
    for old in out_dir.glob("[0-9][0-9]_*.png"):  # overlays of an earlier run would mix with these
        old.unlink()
    worst = report.per_image.sort_values(["score", "id"]).head(config.overlays)
    written = [_write_overlay(row, layout, train, submission, out_dir, rank)
               for rank, row in enumerate(worst.itertuples(index=False), start=1)]
    if written:
        print(f"\noverlays of the {len(written)} worst image(s) (truth green, prediction magenta): {out_dir}")
    return report


def weights_split(weights: list[Path] | None, images: pd.DataFrame) -> Split | None:
    """The validation split recorded in ``weights`` (``kit.split.of_weights``); None without weights."""
    if not weights:
        return None
    return of_weights(split_records(weights), images)


def _stated_ids(train: pd.DataFrame, split: str, ids: list[str] | None, train_csv: Path,
                held_out: Split | None) -> tuple[list[str], str]:
    """(the sorted ids to score, their description for the summary); images outside ``held_out``
    (the weights' validation split) are named in a warning."""
    annotated = set(train["id"])
    if ids is not None:
        unknown = sorted(set(ids) - annotated)
        if unknown:
            raise ValueError(f"--ids {unknown[:5]} are not annotated in {train_csv}; pass training image ids")
        stated, what, asked = sorted(set(ids)), f"--ids of {train_csv}", "--ids"
    elif split == "train":
        stated, what, asked = sorted(annotated), f"every annotated image of {train_csv}", "--split train"
    else:
        if held_out is None:
            logger.info(f"note: no --weights: scoring the default validation split (seed {DEFAULT_SEED}, "
                        f"val-fraction {DEFAULT_VAL_FRACTION:g}); pass --weights FILE to score the split "
                        "those weights were trained with")
            held_out = of_weights((), sartorius.image_table(train))
        stated = present(held_out, sartorius.image_table(train), str(train_csv))
        return stated, f"the validation split of {train_csv} ({held_out.describe()})"
    warning = held_out.overlap_warning(stated, asked) if held_out is not None else None
    if warning:
        logger.warning(warning)
    return stated, what


def _compare_ids(stated: list[str], submission: pd.DataFrame, sub_path: Path, train: pd.DataFrame,
                 what: str) -> tuple[list[str], list[str]]:
    """(stated ids the submission lacks, submission ids outside the stated set); none in common is an error."""
    sub_ids = set(submission["id"])
    if not sub_ids & set(stated):
        listed = sorted(sub_ids)
        hint = ("Pass --split train, or --ids with the images it holds." if sub_ids & set(train["id"]) else
                "Test annotations are hidden: to check locally, predict training images (e.g. the validation "
                "split) and pass that submission.")
        raise ValueError(f"{sub_path} shares no image id with {what} (it has {len(listed)} id(s), e.g. "
                         f"{listed[:3]}). {hint}")
    return sorted(set(stated) - sub_ids), sorted(sub_ids - set(stated))


def _summary(report: metrics.ScoreReport, sub_path: Path, what: str, missing: list[str], unscored: list[str],
             scores_csv: Path) -> str:
    per_image = report.per_image
    counts = ", ".join(f"{t} {n}" for t, n in per_image["cell_type"].value_counts().sort_index().items())
    listed = " ".join(per_image["id"]) if len(per_image) <= 12 else f"listed in {scores_csv}"
    lines = [f"submission: {sub_path}",
             f"scored {len(per_image)} image(s), {what} ({counts}): {listed}"]
    if missing:
        lines.append(f"MISSING from the submission ({len(missing)} image(s), each scores 0 as on the "
                     f"leaderboard): {_some(missing)}")
    if unscored:
        lines.append(f"NOT scored ({len(unscored)} id(s) of the submission outside the scored images): "
                     f"{_some(unscored)}")
    lines += ["", f"score (mean over images of the mean precision over IoU thresholds): {report.score:.6f}",
              "", "per cell type (precision at each IoU threshold, mean over images):",
              report.per_cell_type.to_string(index=False, float_format=lambda v: f"{v:.4f}"),
              "", "per IoU threshold (precision: mean over images; tp/fp/fn: summed over images):",
              report.per_threshold.to_string(index=False, float_format=lambda v: f"{v:.4f}",
                                             formatters={"threshold": "{:.2f}".format})]
    return "\n".join(lines)


def _some(ids: list[str]) -> str:
    return f"{' '.join(ids[:12])}{' ...' if len(ids) > 12 else ''}"


def _write_overlay(row, layout: sartorius.CompetitionLayout, train: pd.DataFrame, submission: pd.DataFrame,
                   out_dir: Path, rank: int) -> Path:
    """The image in gray with every true (green) and predicted (magenta) cell outlined, score in the title."""
    image = sartorius.load_image(layout.train_dir / f"{row.id}.png")
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    truth = train.loc[train["id"] == row.id, "annotation"].tolist()
    # A blank `predicted` (an image without cells) is no mask; validate() lets "id, " through too.
    predicted = [p for p in submission.loc[submission["id"] == row.id, "predicted"] if rle.holds_mask(p)]
    _draw_outlines(canvas, truth, TRUTH_COLOUR, thickness=2)  # wider: still visible under a matching prediction
    _draw_outlines(canvas, predicted, PRED_COLOUR, thickness=1)
    title = np.zeros((_TITLE_HEIGHT, canvas.shape[1], 3), np.uint8)
    text = f"{row.id} {row.cell_type}  score {row.score:.3f}  true {row.n_true} (green)  pred {row.n_pred} (magenta)"
    cv2.putText(title, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", np.vstack([title, canvas]))
    if not ok:
        raise RuntimeError(f"cv2 could not encode the overlay of image {row.id}")
    path = out_dir / f"{rank:02d}_{row.score:.3f}_{row.id}.png"
    with atomic_output(path) as tmp:
        tmp.write_bytes(png.tobytes())
    return path


def _draw_outlines(canvas: np.ndarray, rles: list[str], colour: tuple[int, int, int], thickness: int) -> None:
    """Outline each mask on its own, so overlapping annotations keep their full outlines."""
    for text in rles:
        mask = rle.decode(text, canvas.shape[:2]).view(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, colour, thickness)
