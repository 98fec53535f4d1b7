"""kit.cell_type_classifier: fitted on the shared images, saved as plain arrays, loaded without pickle,
predicting exactly as the fitted scikit-learn model."""
from __future__ import annotations

import numpy as np
import pytest

from kit import cell_type_classifier as ctc
from kit.data import sartorius
from kit.inference import type_classifier
from kit.split import split_train_val


@pytest.fixture(scope="module")
def shared_features(shared_dir) -> tuple[np.ndarray, list[str]]:
    """(features float64[120, 19], cell types) of every annotated shared image."""
    layout = sartorius.find_competition(shared_dir)
    table = sartorius.image_table(sartorius.read_train_csv(layout.train_csv))
    features = np.stack([type_classifier.image_features(sartorius.load_image(layout.train_dir / f"{i}.png")) for i in table["id"]])
    return features, table["cell_type"].tolist()


def test_cell_type_classifier_on_held_out_shared_images(shared_dir):
    """Fitted on the training split's images, it names the validation images' types (cort always)."""
    layout = sartorius.find_competition(shared_dir)
    df = sartorius.read_train_csv(layout.train_csv)
    train_ids, val_ids = split_train_val(sartorius.image_table(df))
    fit_df = df[df["id"].isin(train_ids)]
    truth = sartorius.image_table(df).set_index("id").loc[val_ids, "cell_type"].tolist()
    got = type_classifier.predict_cell_types(layout, fit_df, [layout.train_dir / f"{i}.png" for i in val_ids])
    accuracy = np.mean(np.array(got) == np.array(truth))
    assert accuracy >= 0.8, list(zip(truth, got))
    assert all(g == "cort" for g, t in zip(got, truth) if t == "cort")


def _queries(features: np.ndarray) -> np.ndarray:
    """The fitted rows and 2,000 points scattered around them: many decisions near the class borders."""
    rng = np.random.default_rng(0)
    spread = features.std(axis=0)
    scattered = features[rng.integers(0, len(features), 2000)] + rng.normal(size=(2000, features.shape[1])) * spread
    return np.concatenate([features, scattered])


def test_the_saved_file_predicts_as_the_fitted_model(shared_features, tmp_path):
    features, types = shared_features
    model = type_classifier.make_model().fit(features, types)
    path = type_classifier.save_classifier(tmp_path / type_classifier.FILE_NAME, type_classifier.from_fitted(model))
    assert [p.name for p in tmp_path.iterdir()] == [type_classifier.FILE_NAME]  # no temporary left behind
    loaded = type_classifier.load_classifier(path)
    queries = _queries(features)
    expected = model.predict(queries).tolist()
    assert len(set(expected)) == 3
    assert loaded.predict(queries) == expected
    assert loaded.classes == tuple(model.classes_)


def test_two_classes_predict_as_sklearn_too(shared_features, tmp_path):
    """sklearn stores one coefficient row for two classes; the saved arrays still decide the same."""
    features, types = shared_features
    keep = [k for k, t in enumerate(types) if t != "cort"]  # astro vs shsy5y: the pair that gets confused
    model = type_classifier.make_model().fit(features[keep], [types[k] for k in keep])
    loaded = type_classifier.load_classifier(type_classifier.save_classifier(tmp_path / "two.npz", type_classifier.from_fitted(model)))
    queries = _queries(features[keep])
    assert loaded.predict(queries) == model.predict(queries).tolist()
    assert loaded.coef.shape == (2, features.shape[1])


def test_fit_and_save_from_a_data_folder(shared_dir, tmp_path, capsys):
    path = ctc.main(ctc.get_args_parser().parse_args(["fit", "--data", str(shared_dir),
                                                      "--out", str(tmp_path / "types.npz")]))
    assert "cell-type classifier (astro, cort, shsy5y) fitted" in capsys.readouterr().out
    layout = sartorius.find_competition(shared_dir)
    train_df = sartorius.read_train_csv(layout.train_csv)
    refitted = type_classifier.fit_classifier(layout, train_df)
    loaded = type_classifier.load_classifier(path)
    for name in ("mean", "scale", "coef", "intercept"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(refitted, name))


def test_missing_and_malformed_files_are_errors_naming_the_file(shared_features, tmp_path):
    features, types = shared_features
    good = type_classifier.from_fitted(type_classifier.make_model().fit(features, types))
    with pytest.raises(FileNotFoundError, match=r"missing\.npz.*kit\.cell_type_classifier fit"):
        type_classifier.load_classifier(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"junk\.npz is not a readable \.npz"):
        type_classifier.load_classifier(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", table=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz is not a cell-type classifier"):
        type_classifier.load_classifier(tmp_path / "other.npz")
    pickled = {"format": np.array(type_classifier.FORMAT), "classes": np.array(good.classes, dtype=object), "mean": good.mean,
               "scale": good.scale, "coef": good.coef, "intercept": good.intercept,
               "spectrum_bands": np.geomspace(2e-3, 0.71, 17)}
    np.savez(tmp_path / "pickled.npz", **pickled)  # an object array needs pickle to load: refused
    with pytest.raises(ValueError, match=r"pickled\.npz is not a readable"):
        type_classifier.load_classifier(tmp_path / "pickled.npz")
    type_classifier.save_classifier(tmp_path / "short.npz", type_classifier.CellTypeClassifier(good.classes, good.mean[:5], good.scale,
                                                                        good.coef, good.intercept))
    with pytest.raises(ValueError, match=r"short\.npz: array shapes .* 19 features"):
        type_classifier.load_classifier(tmp_path / "short.npz")
    type_classifier.save_classifier(tmp_path / "zero.npz", type_classifier.CellTypeClassifier(good.classes, good.mean, good.scale * 0,
                                                                       good.coef, good.intercept))
    with pytest.raises(ValueError, match=r"zero\.npz: .*non-positive-scale"):
        type_classifier.load_classifier(tmp_path / "zero.npz")


def test_an_unwritable_out_is_one_line_before_the_fit(shared_dir, unwritable_dir):
    args = ctc.get_args_parser().parse_args(["fit", "--data", str(shared_dir), "--out", str(unwritable_dir / "c.npz")])
    with pytest.raises(SystemExit) as exit_:
        ctc.main(args)
    assert str(exit_.value.code) == (f"kit.cell_type_classifier: error: cannot write to {unwritable_dir} (Permission "
                                     "denied); pass a folder you can write to with --out, or fix its permissions")


def test_the_command_turns_sigterm_into_a_clean_exit():
    from conftest import sigterm_handler_of

    assert sigterm_handler_of("kit.cell_type_classifier") == "exit_on_sigterm.<locals>.stop"
