"""The images a command predicts, with their cell types: a split of the annotated images or the
test images, the annotated type where there is one, else the classifier's (``kit.infer``, ``kit.tune``
and the benchmarks choose their images here)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from kit.data import sartorius
from kit.inference import type_classifier
from kit.split import Split, of_weights, present

logger = logging.getLogger(__name__)


def select_images(layout: sartorius.CompetitionLayout, train_df: pd.DataFrame, split: str,
                  ids: Sequence[str] | None, classifier: type_classifier.CellTypeClassifier | None = None,
                  held_out: Split | None = None) -> tuple[dict[str, Path], dict[str, str]]:
    """``({id: image path}, {id: cell type})`` of the images to predict, sorted by id.

    ``held_out``: the weights' validation split (``kit.split.of_weights``), the "val" images; annotated
    images outside it ("train", ``ids``) are named in a warning. Annotated images keep their annotated
    type; test images get the one ``classifier`` predicts (None: one refitted on ``layout``'s training images).
    """
    table = sartorius.image_table(train_df)
    known = dict(zip(table["id"], table["cell_type"]))
    if split == "test":
        found = sartorius.test_image_paths(layout)
    else:
        if held_out is None:
            raise ValueError(f"--split {split} needs the weights' validation split (kit.split.of_weights)")
        chosen = sorted(table["id"]) if split == "train" else present(held_out, table, str(layout.train_csv))
        found = {image_id: layout.train_dir / f"{image_id}.png" for image_id in chosen}
    if ids is not None:
        unknown = sorted(set(ids) - set(found))
        if unknown:
            raise ValueError(f"--ids {unknown[:5]} are not {split} images of {layout.root}")
        found = {image_id: found[image_id] for image_id in sorted(set(ids))}
    if split != "test":
        warning = held_out.overlap_warning(found, f"--split {split}{' --ids' if ids is not None else ''}")
        if warning:
            logger.warning(warning)
    unlabelled = [image_id for image_id in found if image_id not in known]
    if unlabelled and classifier is None:
        logger.info(f"no cell-type classifier file: fitting one on the training images of {layout.root}")
        classifier = type_classifier.fit_classifier(layout, train_df)
    predicted = classifier.predict_images([found[i] for i in unlabelled]) if unlabelled else []
    cell_types = {**{i: known[i] for i in found if i in known}, **dict(zip(unlabelled, predicted))}
    for image_id, cell_type in zip(unlabelled, predicted):
        logger.info(f"  {image_id}: predicted cell type {cell_type}")
    return found, {image_id: cell_types[image_id] for image_id in found}


def annotated_images(data_dir: str | Path | None, split: str, max_images: int | None = None,
                     weights_splits: Sequence[tuple[str, Mapping | None]] = ()
                     ) -> tuple[dict[str, Path], dict[str, list[str]], dict[str, str]]:
    """``({id: PNG path}, {id: annotation RLEs}, {id: cell type})`` of ``split`` ("val" or "train"),
    its first ``max_images``, in ``select_images``' order (``kit.infer --split``'s). "val" is the
    split of the weights whose (path, recorded split) ``weights_splits`` gives (``kit.split.of_weights``;
    none: the default split)."""
    layout = sartorius.find_competition(data_dir, need_test=False)
    train_df = sartorius.read_train_csv(layout.train_csv)
    held_out = of_weights(weights_splits, sartorius.image_table(train_df))
    image_paths, cell_types = select_images(layout, train_df, split, None, None, held_out)
    ids = list(image_paths)[:max_images]
    annotations = train_df.groupby("id")["annotation"].apply(list)
    return ({i: image_paths[i] for i in ids}, {i: annotations[i] for i in ids}, {i: cell_types[i] for i in ids})
