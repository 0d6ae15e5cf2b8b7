"""Reading the CSV files users actually have: another encoding, ragged rows, blank lines,
spaces after the separator, ';'-separated '.csv' files and markers of missing values."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from polytask.errors import DataError
from polytask.tasks.data import read_spec
from polytask.tasks.spec import DataSpec


def read(path: Path, **options: object) -> pd.DataFrame:
    return read_spec(DataSpec(path=str(path), **options), "data")["train"]


def test_latin1_file_names_the_line_and_the_encoding_option(tmp_path: Path) -> None:
    path = tmp_path / "penguins.csv"
    path.write_bytes("island,species\nBiscoe,Adelie\nDream,Gentoo\nTórgersen,Adelie\n"
                     .encode("latin-1"))
    with pytest.raises(DataError) as error:
        read(path)
    message = str(error.value)
    for fragment in (str(path), "line 4", "not UTF-8", "encoding: latin-1"):
        assert fragment in message
    assert read(path, encoding="latin-1")["island"].tolist() == ["Biscoe", "Dream", "Tórgersen"]


def test_ragged_row_names_the_file_the_line_and_the_field_counts(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("a,b,c\n1,2,3\n4,5,6\n7,8\n")
    with pytest.raises(DataError, match=r"rows.csv', line 4: 2 field\(s\) separated by ','.* "
                                        r"header has 3"):
        read(path)
    path.write_text("a,b,c\n1,2,3\n4,5,6,7\n")
    with pytest.raises(DataError, match=r"line 3: 4 field\(s\)"):
        read(path)


def test_blank_lines_and_spaces_after_the_separator_are_read(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("bill_length_mm, species\n39.1, Adelie\n\n46.5, Gentoo\n\n")
    frame = read(path)
    assert list(frame.columns) == ["bill_length_mm", "species"]
    assert frame["bill_length_mm"].tolist() == [39.1, 46.5]  # numbers, not ' 39.1' text
    assert frame["species"].tolist() == ["Adelie", "Gentoo"]


@pytest.mark.parametrize("separator", [";", "\t", "|"])
def test_the_separator_of_a_csv_file_is_sniffed_from_its_header(tmp_path: Path,
                                                                separator: str) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(separator.join(["a", "b", "label"]) + "\n"
                    + "\n".join(separator.join(["1,5", str(i), "x"]) for i in range(4)) + "\n")
    frame = read(path)
    assert list(frame.columns) == ["a", "b", "label"]
    assert frame["b"].tolist() == [0, 1, 2, 3]


def test_an_explicit_delimiter_wins_and_a_one_column_file_stays_one_column(
        tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("text\nhello; world\nsee; you\n")
    assert read(path)["text"].tolist() == ["hello; world", "see; you"]
    path.write_text("a:b\n1:2\n")
    assert read(path, delimiter=":")["b"].tolist() == [2]


def test_declared_missing_markers_become_missing_values(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("bill_length_mm,species\n39.1,Adelie\n?,Adelie\n-999,Gentoo\n")
    frame = read(path, missing_values=["?", -999])
    assert pd.api.types.is_float_dtype(frame["bill_length_mm"])
    assert frame["bill_length_mm"].isna().tolist() == [False, True, True]


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("a,b\n1,2\n".encode("utf-8-sig"))
    assert list(read(path).columns) == ["a", "b"]


def test_csv_options_on_other_formats_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n')
    with pytest.raises(DataError, match=r"delimiter only apply to \.csv/\.tsv files"):
        read(path, delimiter=";")


def test_unknown_encoding_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="unknown text encoding 'latin-9x'"):
        DataSpec(path="rows.csv", encoding="latin-9x")
