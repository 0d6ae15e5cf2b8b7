"""Tabular inputs as a user's table has them: missing numbers (imputed with train statistics
that travel with the model), stray text in a numeric column, a label used as an input, and
tasks that read different columns."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from polytask import load, load_config
from polytask.errors import ConfigError, DataError
from polytask.models.inputs import TabularInputs
from polytask.models.spec import BackboneSpec
from polytask.pipeline import prepare
from polytask.train.trainer import Trainer

COLUMNS = ["bill_length_mm", "island"]


def penguins(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """A palmerpenguins-like table: a numeric and a categorical input, two labels."""
    rng = np.random.default_rng(seed)
    bill = rng.normal(44.0, 5.0, n).round(1)
    return pd.DataFrame({
        "bill_length_mm": bill,
        "island": rng.choice(["Biscoe", "Dream", "Torgersen"], n),
        "species": np.where(bill > 44.0, "Gentoo", "Adelie"),
        "sex": rng.choice(["male", "female"], n),
    })


def test_missing_values_are_refused_naming_column_row_and_fix() -> None:
    train = penguins()
    train.loc[3, "bill_length_mm"] = np.nan
    inputs = TabularInputs()
    inputs.fit(train, COLUMNS)
    with pytest.raises(DataError, match=r"'bill_length_mm', row 3.*impute: median"):
        inputs.encode(train, COLUMNS)


def test_median_imputation_uses_train_statistics_only() -> None:
    train, test = penguins(), penguins(seed=1)
    train.loc[[2, 5], "bill_length_mm"] = np.nan
    test["bill_length_mm"] = 1000.0  # test rows must not move the fill value
    test.loc[0, "bill_length_mm"] = np.nan
    inputs = TabularInputs(impute="median")
    inputs.fit(train, COLUMNS)
    median = train["bill_length_mm"].median()
    assert inputs.fill == {"bill_length_mm": median}
    encoded = inputs.encode(test, COLUMNS)["numeric"]
    expected = (median - inputs.mean[0]) / inputs.std[0]
    assert encoded[0, 0].item() == pytest.approx(expected, abs=1e-5)
    assert encoded.shape == (len(test), 1)  # no indicator unless asked


def test_constant_imputation_with_missing_indicators_per_column() -> None:
    train = penguins()
    train["flipper_length_mm"] = np.linspace(170.0, 230.0, len(train))
    train.loc[1, "flipper_length_mm"] = np.nan
    train.loc[4, "bill_length_mm"] = np.nan
    columns = ["bill_length_mm", "flipper_length_mm", "island"]
    inputs = TabularInputs(impute={"flipper_length_mm": "constant"}, impute_value=-1.0,
                           missing_indicator=True)
    inputs.fit(train, columns)
    assert inputs.impute == {"flipper_length_mm": "constant"}
    with pytest.raises(DataError, match=r"\['bill_length_mm'\].*row 4"):  # not imputed
        inputs.encode(train, columns)
    train.loc[4, "bill_length_mm"] = 40.0
    numeric = inputs.encode(train, columns)["numeric"]
    assert inputs.numeric_width == 3 and numeric.shape == (len(train), 3)
    assert numeric[:, 2].tolist() == [float(i == 1) for i in range(len(train))]
    filled = -1.0 * 1.0  # the constant, standardised with train statistics
    assert numeric[1, 1].item() == pytest.approx(
        (filled - inputs.mean[1]) / inputs.std[1], abs=1e-5)


def test_saved_state_fills_new_rows_the_same_way() -> None:
    train = penguins()
    train.loc[0, "bill_length_mm"] = np.nan
    fitted = TabularInputs(impute="mean", missing_indicator=True)
    fitted.fit(train, COLUMNS)
    reloaded = TabularInputs()  # what `polytask.load` builds from model/meta.json
    reloaded.load_state(fitted.state())
    rows = penguins(5, seed=2)
    rows.loc[2, "bill_length_mm"] = np.nan
    for key, value in fitted.encode(rows, COLUMNS).items():
        assert reloaded.encode(rows, COLUMNS)[key].equal(value)


def test_stray_text_in_a_numeric_column_is_refused_not_made_categorical() -> None:
    train = penguins().astype({"bill_length_mm": object})
    train.loc[17, "bill_length_mm"] = "n/a"
    inputs = TabularInputs()
    inputs.fit(train, COLUMNS)
    assert inputs.numeric == ["bill_length_mm"]
    with pytest.raises(DataError) as error:
        inputs.encode(train, COLUMNS)
    message = str(error.value)
    for fragment in ("'bill_length_mm' is numeric", "row 17", "'n/a'", "missing_values",
                     "model.backbone.categorical"):
        assert fragment in message
    declared = TabularInputs(categorical=["bill_length_mm"])
    declared.fit(train, COLUMNS)
    assert declared.categorical == COLUMNS
    assert declared.encode(train, COLUMNS)["categorical"].shape == (len(train), 2)


def test_settings_naming_unknown_or_categorical_columns_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"model.backbone.categorical: \['bill'\]"):
        TabularInputs(categorical=["bill"]).fit(penguins(), COLUMNS)
    with pytest.raises(ConfigError, match=r"model.backbone.impute: .*'island'.*categorical"):
        TabularInputs(impute={"island": "median"}).fit(penguins(), COLUMNS)


@pytest.mark.parametrize(("settings", "fragment"), [
    ({"type": "mlp", "impute": "constant"}, "impute_value"),
    ({"type": "mlp", "impute_value": 0}, "impute: constant"),
    ({"type": "mlp", "missing_indicator": True}, "set `impute`"),
    ({"type": "mlp", "impute": "mode"}, "median"),
    ({"type": "hf", "name": "x", "impute": "median"}, "type: mlp"),
])
def test_backbone_imputation_settings_are_checked(settings: dict[str, object],
                                                  fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        BackboneSpec.model_validate(settings)


def _config(data: dict[str, object], inputs: list[str], **backbone: object) -> dict[str, object]:
    return {
        "data": data,
        "tasks": [
            {"name": "species", "kind": "classification", "input": inputs, "label": "species"},
            {"name": "sex", "kind": "classification", "input": inputs, "label": "sex"},
        ],
        "model": {"backbone": {"type": "mlp", "hidden": [8], **backbone}},
        "baselines": "none",
        "train": {"max_steps": 2, "batch_size": 8, "eval_every": 2, "progress": False,
                  "callbacks": []},
    }


def test_trained_run_predicts_with_the_saved_imputation(tmp_path: Path) -> None:
    table = penguins(60)
    table.loc[[3, 30], "bill_length_mm"] = np.nan
    path = tmp_path / "penguins.csv"
    table.to_csv(path, index=False)
    config = load_config(_config({"path": str(path)}, COLUMNS, impute="median",
                                 missing_indicator=True))
    Trainer(config, run_dir=tmp_path / "run").fit()
    run = load(tmp_path / "run")
    assert run.encoder.impute == {"bill_length_mm": "median"}
    assert run.encoder.fill["bill_length_mm"] == pytest.approx(
        table["bill_length_mm"].median(), abs=5.0)  # the train split's median
    rows = pd.DataFrame({"bill_length_mm": [np.nan, 50.0], "island": ["Dream", "Biscoe"]})
    predictions = run.predict(rows)
    assert predictions["species"].isin(["Adelie", "Gentoo"]).all()


def test_a_label_used_as_another_tasks_input_is_warned_about() -> None:
    config = load_config(_config({"train": penguins()}, ["bill_length_mm", "island", "sex"]))
    with pytest.warns(UserWarning, match=r"column 'sex' is the label of task 'sex' and an "
                      r"input of task\(s\) \['species', 'sex'\].*label leakage"):
        prepare(config)
    clean = load_config(_config({"train": penguins()}, COLUMNS))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare(clean)
    assert not [w for w in caught if "label leakage" in str(w.message)]


def test_tabular_tasks_reading_different_columns_fail_when_the_config_loads() -> None:
    config = _config({"train": penguins()}, COLUMNS)
    config["tasks"][1]["input"] = ["bill_length_mm"]  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"tasks.sex.input: \['bill_length_mm'\] differs "
                       r"from tasks.species.input .*same input columns for every task"):
        load_config(config)
    load_config({**config, "only": ["species"]})  # one task: nothing to disagree with
