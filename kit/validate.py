"""Score a submission locally exactly as the leaderboard does: ``python -m kit.validate``.

The test set's annotations are hidden, so a local check scores a submission made for *training*
images against their ``train.csv`` annotations. Only the submission's ids that ``train.csv``
annotates are scored (the others are listed); the per-image scores and overlay PNGs of the worst
images (image in gray, truth outlines green, prediction outlines magenta) go to ``overlays/``
beside the submission.

    python -m kit.validate --data ../shared --submission runs/val/submission.csv --overlays 8
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from kit import data, metrics, rle
from kit.files import atomic_output, write_text_atomic
from kit.submission import read_submission, validate

TRUTH_COLOUR = (0, 220, 0)  # BGR green
PRED_COLOUR = (255, 0, 255)  # BGR magenta
_TITLE_HEIGHT = 26


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kit.validate", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=None,
                        help="folder holding the competition data somewhere below it (default: kit.paths.input_root())")
    parser.add_argument("--submission", type=Path, required=True,
                        help="submission.csv (id,predicted) for training images")
    parser.add_argument("--overlays", type=int, default=8, metavar="N",
                        help="write overlay PNGs of the N worst-scoring images (0: none)")
    parser.add_argument("--overlay-dir", type=Path, default=None,
                        help="where overlays and per-image scores go (default: overlays/ beside the submission)")
    return parser


def main(args: argparse.Namespace) -> metrics.ScoreReport:
    """Validate and score the submission, print the tables, write per-image scores and overlays."""
    if args.overlays < 0:
        raise SystemExit(f"kit.validate: error: --overlays must be >= 0, got {args.overlays}")
    try:
        layout = data.find_competition(args.data, need_test=False)
        train = data.read_train_csv(layout.train_csv)
        submission = read_submission(args.submission)
        validate(args.submission, submission["id"].unique())
    except (FileNotFoundError, ValueError) as err:  # SubmissionError is a ValueError
        raise SystemExit(f"kit.validate: error: {err}") from None
    scored, unscored = _split_ids(submission, train, args.submission, layout.train_csv)
    report = metrics.score_report(train[train["id"].isin(scored)], submission[submission["id"].isin(scored)])
    out_dir = args.overlay_dir or args.submission.parent / "overlays"
    scores_csv = write_text_atomic(out_dir / "scores.csv", report.per_image.to_csv(index=False, float_format="%.6f"))
    print(_summary(report, args.submission, layout.train_csv, unscored, scores_csv))
    worst = report.per_image.sort_values(["score", "id"]).head(args.overlays)
    written = [_write_overlay(row, layout, train, submission, out_dir, rank)
               for rank, row in enumerate(worst.itertuples(index=False), start=1)]
    if written:
        print(f"\noverlays of the {len(written)} worst image(s) (truth green, prediction magenta): {out_dir}")
    return report


def _split_ids(submission: pd.DataFrame, train: pd.DataFrame, sub_path: Path,
               train_csv: Path) -> tuple[list[str], list[str]]:
    """(ids to score: annotated in train.csv, ids that cannot be scored); no id in common is an error."""
    sub_ids = sorted(submission["id"].unique())
    annotated = set(train["id"])
    scored = [i for i in sub_ids if i in annotated]
    if not scored:
        raise SystemExit(
            f"kit.validate: error: {sub_path} shares no image id with {train_csv} (it has {len(sub_ids)} id(s), "
            f"e.g. {sub_ids[:3]}). Test annotations are hidden: to check locally, predict training images "
            "(e.g. the validation split) and pass that submission.")
    return scored, [i for i in sub_ids if i not in annotated]


def _summary(report: metrics.ScoreReport, sub_path: Path, train_csv: Path, unscored: list[str],
             scores_csv: Path) -> str:
    per_image = report.per_image
    counts = ", ".join(f"{t} {n}" for t, n in per_image["cell_type"].value_counts().sort_index().items())
    listed = " ".join(per_image["id"]) if len(per_image) <= 12 else f"listed in {scores_csv}"
    lines = [f"submission: {sub_path}",
             f"scored {len(per_image)} image(s) of {train_csv} ({counts}): {listed}"]
    if unscored:
        lines.append(f"NOT scored ({len(unscored)} id(s) without annotations in train.csv): "
                     f"{' '.join(unscored[:12])}{' ...' if len(unscored) > 12 else ''}")
    lines += ["", f"score (mean over images of the mean precision over IoU thresholds): {report.score:.6f}",
              "", "per cell type (precision at each IoU threshold, mean over images):",
              report.per_cell_type.to_string(index=False, float_format=lambda v: f"{v:.4f}"),
              "", "per IoU threshold (precision: mean over images; tp/fp/fn: summed over images):",
              report.per_threshold.to_string(index=False, float_format=lambda v: f"{v:.4f}",
                                             formatters={"threshold": "{:.2f}".format})]
    return "\n".join(lines)


def _write_overlay(row, layout: data.CompetitionLayout, train: pd.DataFrame, submission: pd.DataFrame,
                   out_dir: Path, rank: int) -> Path:
    """The image in gray with every true (green) and predicted (magenta) cell outlined, score in the title."""
    image = data.load_image(layout.train_dir / f"{row.id}.png")
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


if __name__ == "__main__":
    main(get_args_parser().parse_args())
