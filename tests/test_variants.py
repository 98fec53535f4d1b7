"""The variant registry: the paper's five variants, their settings, and their round trip as data."""
from __future__ import annotations

import pytest

from kit.model.variants import describe_variants, get_variant, PAPER_VARIANTS, Variant, VARIANTS

# The table, written out independently of the registry.
EXPECTED = {
    #  name: (in_channels, out_channels, target, pos_weight, dropout, augment)
    "unet": (1, 1, "mask", 1.0, 0.0, False),
    "hot-unet": (4, 1, "mask", 1.0, 0.0, False),
    "hot-unet-weighted": (4, 1, "mask", 3.0, 0.0, False),
    "hot-flow-unet": (4, 3, "flow", 1.0, 0.0, False),
    "hot-drop-unet": (4, 1, "mask", 1.0, 0.2, True),
}


def test_registry_holds_the_five_variants_of_the_paper_then_the_kits_recipe():
    assert list(PAPER_VARIANTS) == list(EXPECTED)
    assert list(VARIANTS) == [*EXPECTED, "hot-flow-unet-plus"]
    for name, (cin, cout, target, pos_weight, dropout, augment) in EXPECTED.items():
        v = VARIANTS[name]
        assert (v.name, v.in_channels, v.out_channels, v.target) == (name, cin, cout, target)
        assert (v.pos_weight, v.dropout, v.augment) == (pos_weight, dropout, augment)
        assert v.one_hot == (cin == 4)


def test_every_paper_variant_has_the_seed_schedule():
    for v in map(VARIANTS.get, PAPER_VARIANTS):
        assert (v.schedule, v.optimizer, v.cell_diameter, v.crop_size) == ("step", "sgd", 0.0, 0)
        assert (v.epochs, v.lr, v.lr_step, v.lr_gamma, v.batch_size) == (50, 0.01, 10, 0.5, 2)


def test_get_variant_returns_the_registered_one_and_lists_valid_names_otherwise():
    assert get_variant("hot-flow-unet") is VARIANTS["hot-flow-unet"]
    with pytest.raises(ValueError) as err:
        get_variant("hot-unet-flow")
    message = str(err.value)
    assert "hot-unet-flow" in message
    assert all(name in message for name in EXPECTED)


def test_variants_are_frozen():
    with pytest.raises(AttributeError):
        VARIANTS["unet"].epochs = 3


def test_dict_round_trip_keeps_every_setting():
    for v in VARIANTS.values():
        settings = v.to_dict()
        assert all(isinstance(value, (str, int, float, bool)) for value in settings.values())
        assert Variant.from_dict(settings) == v
    changed = VARIANTS["hot-unet"].replace(epochs=7, batch_size=8)
    assert Variant.from_dict(changed.to_dict()) == changed
    assert (changed.epochs, changed.batch_size, VARIANTS["hot-unet"].epochs) == (7, 8, 50)


def test_from_dict_rejects_unknown_and_missing_settings():
    settings = VARIANTS["unet"].to_dict()
    with pytest.raises(ValueError, match="unknown variant setting.*'colour'"):
        Variant.from_dict({**settings, "colour": "red"})
    del settings["target"]
    with pytest.raises(ValueError, match="lack.*'target'"):
        Variant.from_dict(settings)


@pytest.mark.parametrize("changes, problem", [
    ({"target": "edges"}, "target must be one of"),
    ({"in_channels": 2}, "in_channels must be 1"),
    ({"out_channels": 3}, "needs out_channels=1"),
    ({"dropout": 1.0}, "dropout must be in"),
    ({"pos_weight": 0.0}, "pos_weight must be > 0"),
    ({"epochs": 0}, "must be >= 1"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of"),
    ({"lr_gamma": 1.5}, "lr_gamma"),
])
def test_inconsistent_settings_are_rejected_with_the_reason(changes, problem):
    with pytest.raises(ValueError, match=problem):
        VARIANTS["hot-unet"].replace(**changes)


def test_the_recipe_rescales_crops_and_follows_a_cosine_schedule():
    v = VARIANTS["hot-flow-unet-plus"]
    assert (v.target, v.in_channels, v.augment) == ("flow", 4, True)
    assert (v.cell_diameter, v.crop_size, v.schedule, v.optimizer) == (30.0, 256, "cosine", "adamw")


@pytest.mark.parametrize("changes, problem", [
    ({"schedule": "linear"}, "schedule must be one of"),
    ({"warmup": 1.0}, "warmup must be in"),
    ({"crop_size": 100}, "multiple of 16"),
    ({"cell_diameter": -1.0}, "must be >= 0"),
])
def test_inconsistent_recipe_settings_are_rejected(changes, problem):
    with pytest.raises(ValueError, match=problem):
        VARIANTS["hot-flow-unet-plus"].replace(**changes)


def test_describe_variants_is_a_table_with_one_row_per_variant():
    lines = describe_variants().splitlines()
    assert lines[0].split()[:3] == ["name", "input", "target"]
    assert set(lines[1]) == {"-", " "}
    rows = lines[2:]
    assert [row.split()[0] for row in rows] == list(VARIANTS)
    weighted = next(row for row in rows if row.startswith("hot-unet-weighted"))
    assert weighted.split()[1:6] == ["image", "+", "one-hot", "mask", "3"]
