"""Offline inference: trained weights -> instances -> a validated ``submission.csv``.

``python -m kit.infer --data DIR --weights FILE [FILE ...] --out submission/submission.csv``

Needs no network. Every weights file is read with ``torch.load(weights_only=True)`` (through
``kit.models.load_checkpoint``) and carries its variant's settings; several files of the same
target type (mask or flow) are averaged, or, with ``--select-best``, the one whose ``kit.tune``
validation score is highest is used alone. Images are predicted at native resolution in batches,
optionally with flip test-time augmentation, then post-processed: ``kit.postprocess.mask_to_labels``
for the mask variants, ``kit.flows.flows_to_labels`` for the flow variant.

Cell types: the test images come without one, yet the one-hot variants take it as input and the
post-processing uses it (minimum sizes, watershed seeds). For images listed in ``train.csv`` the
annotated type is used; test images get the type predicted by the classifier of
``kit.cell_type_classifier``, loaded from ``--cell-type-model`` (default: ``cell-types.npz`` beside
the first weights file, where the training kernel leaves it). Without such a file it is refitted on
the training images of the same data folder at start-up, and a printed line says so.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from kit import batches, cell_type_classifier, data, flows, metrics, models, paths, postprocess, rle, submission
from kit.files import OutputError, check_writable_dir, exit_on_sigterm, remove_stale_temporaries
from kit.variants import Variant

DEFAULT_BATCH_SIZE = 4


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kit.infer", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None,
                        help="folder holding the competition data (default: kit.paths.input_root())")
    parser.add_argument("--weights", nargs="+", required=True, help="weights files from kit.train (one target type)")
    parser.add_argument("--out", default=None, help="submission file (default: <working dir>/submission.csv)")
    parser.add_argument("--split", choices=("test", "train", "val"), default="test",
                        help="images to predict: the test images, or annotated training images "
                             "(all of them / the validation split)")
    parser.add_argument("--ids", nargs="+", default=None, help="only these image ids")
    parser.add_argument("--tta", action="store_true", help="average over horizontal/vertical flips")
    parser.add_argument("--select-best", action="store_true",
                        help="use only the weights file whose kit.tune validation score (the cell types' mean) "
                             "is highest, instead of averaging them; each must be tuned on the same images")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--evaluate", action="store_true", help="print the leaderboard score (annotated images only)")
    parser.add_argument("--boundary-lut", default=None,
                        help="boundary-tuning table from `python -m kit.boundary_table fit` (default: no tuning)")
    parser.add_argument("--cell-type-model", default=None, metavar="FILE",
                        help="cell-type classifier from `python -m kit.cell_type_classifier fit` (default: "
                             f"{cell_type_classifier.FILE_NAME} beside the first weights file used, if there, "
                             "else one refitted on the training images)")
    parser.add_argument("--flow-threshold", type=float, default=None,
                        help="flow variant: drop instances whose flow error exceeds this, for every cell type "
                             f"(default: the checkpoint's tuned value per type, else {flows.FLOW_THRESHOLD})")
    parser.add_argument("--allow-empty", action="store_true",
                        help="let a submission without any cell replace one that has cells")
    return parser


def main(args: argparse.Namespace) -> Path:
    """Write the submission; bad input ends the run with ``kit.infer: error: ...`` naming the culprit."""
    try:
        return run(args)
    except (FileNotFoundError, ValueError, OutputError) as err:  # SubmissionError is a ValueError
        raise SystemExit(f"kit.infer: error: {err}") from None


def run(args: argparse.Namespace) -> Path:
    """Predict the selected images, write and validate the submission, optionally score it."""
    started = time.perf_counter()
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.evaluate and args.split == "test":
        raise ValueError("--evaluate needs annotated images: add --split train or --split val")
    device = models.resolve_device(args.device)
    out = Path(args.out) if args.out else paths.working_dir() / "submission.csv"
    check_writable_dir(out.parent)  # before the predictions, not after them
    for path in remove_stale_temporaries(out.parent, [out.name]):
        print(f"removed {path}: a partial file left by a write that was killed")
    ensemble = load_ensemble(args.weights, device)  # first: a bad weights file fails fast
    if args.select_best:
        ensemble = [best_validated(ensemble)]
    classifier = load_cell_type_model(args.cell_type_model, ensemble[0].path)
    layout = data.find_competition(args.data, need_train=True, need_test=args.split == "test")
    train_df = data.read_train_csv(layout.train_csv)
    image_paths, cell_types = select_images(layout, train_df, args.split, args.ids, classifier)
    config = postprocess.PostprocessConfig(
        boundary=postprocess.load_boundary_lut(args.boundary_lut) if args.boundary_lut else None,
    ).with_tuned(ensemble[0].settings.get("postprocess"))
    print(f"{len(image_paths)} images ({args.split}), {len(ensemble)} weights file(s) of target "
          f"{ensemble[0][1].target!r}, device {device}, tta {'on' if args.tta else 'off'}")
    predictions = predict_labels(ensemble, image_paths, cell_types, device, args.batch_size, args.tta,
                                 config, args.flow_threshold)
    n_cells = sum(int(labels.max()) for labels in predictions.values())
    if n_cells == 0:
        _check_empty(out, len(predictions), args.allow_empty)
    submission.write_submission(predictions, out, expected_ids=list(image_paths))
    print(f"wrote {out}: {n_cells} cells in {len(predictions)} images ({time.perf_counter() - started:.1f} s)")
    if args.evaluate:
        report_score(train_df, out, cell_types)
    return out


def select_images(layout: data.CompetitionLayout, train_df: pd.DataFrame, split: str,
                  ids: Sequence[str] | None, classifier: cell_type_classifier.CellTypeClassifier | None = None
                  ) -> tuple[dict[str, Path], dict[str, str]]:
    """``({id: image path}, {id: cell type})`` of the images to predict, sorted by id.

    Annotated images keep their annotated type; test images get the one ``classifier`` predicts
    (None: a classifier refitted on the training images of ``layout``).
    """
    table = data.image_table(train_df)
    known = dict(zip(table["id"], table["cell_type"]))
    if split == "test":
        found = data.test_image_paths(layout)
    else:
        chosen = sorted(table["id"]) if split == "train" else data.split_train_val(table)[1]
        found = {image_id: layout.train_dir / f"{image_id}.png" for image_id in chosen}
    if ids is not None:
        unknown = sorted(set(ids) - set(found))
        if unknown:
            raise ValueError(f"--ids {unknown[:5]} are not {split} images of {layout.root}")
        found = {image_id: found[image_id] for image_id in sorted(set(ids))}
    unlabelled = [image_id for image_id in found if image_id not in known]
    if unlabelled and classifier is None:
        print(f"no cell-type classifier file: fitting one on the training images of {layout.root}")
        classifier = cell_type_classifier.fit_classifier(layout, train_df)
    predicted = classifier.predict_images([found[i] for i in unlabelled]) if unlabelled else []
    cell_types = {**{i: known[i] for i in found if i in known}, **dict(zip(unlabelled, predicted))}
    for image_id, cell_type in zip(unlabelled, predicted):
        print(f"  {image_id}: predicted cell type {cell_type}")
    return found, {image_id: cell_types[image_id] for image_id in found}


def load_cell_type_model(path: str | Path | None, first_weights: str | Path
                         ) -> cell_type_classifier.CellTypeClassifier | None:
    """The classifier in ``path``, else in the file beside ``first_weights``; None if neither is given or there."""
    if path is None:
        beside = Path(first_weights).parent / cell_type_classifier.FILE_NAME
        if not beside.is_file():
            return None
        path = beside
    classifier = cell_type_classifier.load_classifier(path)
    print(f"cell types from the classifier in {path}")
    return classifier


class Member(NamedTuple):
    """One weights file of an ensemble: the model in eval mode on the device, its variant, its path,
    and the checkpoint's inference settings (per-type ``scales``, tuned ``postprocess`` settings)."""

    model: torch.nn.Module
    variant: Variant
    path: Path
    settings: Mapping = MappingProxyType({})


def load_ensemble(weights: Sequence[str | Path], device: torch.device) -> list[Member]:
    """One ``Member`` per file; every file must hold the same target type."""
    ensemble = []
    for path in weights:
        model, variant, checkpoint = models.load_checkpoint(path, map_location=device)
        ensemble.append(Member(model, variant, Path(path), checkpoint.get("inference", {})))
    targets = {member.variant.target for member in ensemble}
    if len(targets) > 1:
        listed = ", ".join(f"{m.path.name} ({m.variant.name}: {m.variant.target})" for m in ensemble)
        raise ValueError(f"weights of different target types cannot be averaged: {listed}; "
                         "pass only mask variants or only flow variants")
    return ensemble


def best_validated(ensemble: Sequence[Member]) -> Member:
    """The member whose ``kit.tune`` validation score (``settings["validation"]["type_mean"]``) is
    highest; every member must carry one, fitted on the same images, or scores cannot be compared."""
    unscored = [str(m.path) for m in ensemble if "validation" not in m.settings]
    if unscored:
        raise ValueError(f"--select-best: {unscored[0]} carries no validation score; run "
                         f"`python -m kit.tune --data DIR --weights {unscored[0]}` on it first")
    records = [m.settings["validation"] for m in ensemble]
    if len({r["image_ids_sha256"] for r in records}) > 1:
        listed = ", ".join(f"{m.path} ({r['images']} {r['split']} images)" for m, r in zip(ensemble, records))
        raise ValueError(f"--select-best: {listed} were tuned on different images, so their scores cannot be "
                         "compared; run kit.tune on each with the same --data and --split")
    best = max(ensemble, key=lambda m: m.settings["validation"]["type_mean"])
    for member, record in zip(ensemble, records):
        chosen = "  <- used" if member is best else ""
        print(f"  {member.path}: validation type mean {record['type_mean']:.4f} over {record['images']} "
              f"{record['split']} images{' (flip TTA)' if record['tta'] else ''}{chosen}")
    return best


def predict_labels(ensemble, image_paths: Mapping[str, Path], cell_types: Mapping[str, str],
                   device: torch.device, batch_size: int = DEFAULT_BATCH_SIZE, tta: bool = False,
                   config: postprocess.PostprocessConfig = postprocess.PostprocessConfig(),
                   flow_threshold: float | None = None) -> dict[str, np.ndarray]:
    """``{id: int32[H, W] instances}`` for every image, predicted in batches and post-processed
    (``flow_threshold``, when given, overrides the config's per-type flow-error thresholds)."""
    ids = list(image_paths)
    results = {}
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        images = np.stack([data.load_image(image_paths[i]) for i in batch])
        types = [cell_types[i] for i in batch]
        prob, flow = predict(ensemble, images, types, device, tta, batch)
        for k, image_id in enumerate(batch):
            results[image_id] = postprocess.output_to_labels(
                prob[k], None if flow is None else flow[k], images[k], types[k], config, flow_threshold)
    return results


@torch.inference_mode()
def predict(ensemble, images: np.ndarray, cell_types: Sequence[str], device: torch.device,
            tta: bool = False, ids: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Ensemble (and flip) average: (prob float32[B, H, W], flows float32[B, 2, H, W] (dy, dx) or None).

    ``images``: uint8[B, H, W]. A non-finite model output raises an error naming the image and the
    weights file.
    """
    ids = list(ids) if ids is not None else [f"#{k}" for k in range(len(images))]
    batch = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    flips = [(), (-1,), (-2,), (-2, -1)] if tta else [()]
    prob_sum, flow_sum = 0.0, None
    for member in (Member(*m) for m in ensemble):  # plain (model, variant, path) tuples too
        for dims in flips:
            prob, flow = _member_output(member, batch, cell_types, dims, device)
            _check_finite(prob, flow, ids, member.path)
            prob_sum = prob_sum + prob
            if flow is not None:
                flow_sum = flow if flow_sum is None else flow_sum + flow
    n = len(ensemble) * len(flips)
    prob = (prob_sum / n).cpu().numpy()  # float32: decode_output returns float
    return prob, None if flow_sum is None else (flow_sum / n).cpu().numpy()


def report_score(train_df: pd.DataFrame, submission_path: Path, cell_types: Mapping[str, str]) -> metrics.ScoreReport:
    """Print the leaderboard-style score of ``submission_path`` on its (annotated) images."""
    solution = train_df.loc[train_df["id"].isin(list(cell_types)), ["id", "annotation"]]
    report = metrics.score_report(solution, submission.read_submission(submission_path), cell_types)
    print(f"leaderboard score over {len(cell_types)} images: {report.score:.4f}")
    print(report.per_cell_type.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return report


def _check_empty(out: Path, n_images: int, allow_empty: bool) -> None:
    """A submission without a single cell is said out loud, and replaces one that has cells only
    with ``--allow-empty``."""
    try:
        earlier = submission.read_submission(out) if out.is_file() else None
    except submission.SubmissionError:
        earlier = None  # an unreadable file is no good submission to protect
    if not allow_empty and earlier is not None and earlier["predicted"].map(rle.holds_mask).any():
        raise ValueError(f"no cell predicted in any of the {n_images} images (untrained or broken weights?), "
                         f"and {out} holds cells: it was kept. Pass --allow-empty to replace it anyway")
    print(f"kit.infer: warning: no cell predicted in any of the {n_images} images (untrained or broken "
          "weights?); the submission scores 0", file=sys.stderr)


def _member_output(member: Member, images: torch.Tensor, cell_types: Sequence[str], dims: tuple[int, ...],
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One member's decoded output for uint8[B, H, W] ``images`` at their native size.

    A member trained on rescaled images (``settings["scales"]``) sees each image resampled to its
    cell type's scale exactly as training cut its crops (``kit.batches.resample``, rounded to
    uint8); its outputs are resized back bilinearly. Flows are unit vectors, so only their grid
    changes, not their length.
    """
    scales = member.settings.get("scales")
    if not scales:
        return _forward(member.model, member.variant, models.model_input(images, cell_types, member.variant),
                        dims, device)
    probs, flows_out = [], []
    for k, cell_type in enumerate(cell_types):
        scale = torch.tensor([float(scales[cell_type])])
        image = batches.resample(images[k:k + 1, None].float(), scale, None, mode="bilinear")
        x = models.model_input(image[:, 0].round().clamp(0, 255).to(torch.uint8), [cell_type], member.variant)
        prob, flow = _forward(member.model, member.variant, x, dims, device)
        probs.append(F.interpolate(prob[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0])
        if flow is not None:
            flows_out.append(F.interpolate(flow, size=images.shape[-2:], mode="bilinear", align_corners=False))
    return torch.cat(probs), torch.cat(flows_out) if flows_out else None


def _forward(model: torch.nn.Module, variant: Variant, x: torch.Tensor, dims: tuple[int, ...],
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decoded output for input flipped along ``dims``, flipped back. Un-flipping a flow field
    also negates the component along each flipped axis (dy for H, dx for W)."""
    if dims:
        x = torch.flip(x, dims)
    amp_dtype = models.gpu_autocast_dtype(device)  # as the trainer ran: bf16 where the GPU has it
    # No autocast context at all in fp32: older torch (2.1.2) refuses a CPU autocast of any dtype but
    # bf16 even with enabled=False ("AutocastCPU only support Bfloat16").
    with contextlib.nullcontext() if amp_dtype is None else torch.autocast(device.type, dtype=amp_dtype):
        output = model(x)
    prob, flow = models.decode_output(output, variant)
    if not dims:
        return prob, flow
    prob = torch.flip(prob, dims)
    if flow is not None:
        flow = torch.flip(flow, dims)  # a new tensor: negating in place is safe
        for dim in dims:
            flow[:, 0 if dim == -2 else 1] *= -1
    return prob, flow


def _check_finite(prob: torch.Tensor, flow: torch.Tensor | None, ids: Sequence[str], path: Path) -> None:
    bad = ~torch.isfinite(prob).flatten(1).all(dim=1)
    if flow is not None:
        bad |= ~torch.isfinite(flow).flatten(1).all(dim=1)
    if bad.any():
        names = [ids[k] for k in torch.nonzero(bad).flatten().tolist()]
        raise ValueError(f"weights {path}: the model output holds NaN or infinite values for image(s) "
                         f"{', '.join(names)}; the weights are broken (retrain, or drop this file)")


if __name__ == "__main__":
    exit_on_sigterm()
    main(get_args_parser().parse_args())
