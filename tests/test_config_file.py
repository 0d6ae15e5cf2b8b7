"""A config path that is a folder, unreadable or not UTF-8 text is a clear ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from polytask import load_config
from polytask.cli import app
from polytask.errors import ConfigError


def test_a_folder_given_as_the_config_points_to_its_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "other.yaml").write_text("name: other\n")
    (tmp_path / "config.yaml").write_text("name: run\n")
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path)
    assert str(raised.value) == (f"config {str(tmp_path)!r} is a folder, not a YAML file; give "
                                 f"the YAML file, e.g. {str(tmp_path / 'config.yaml')!r}")


def test_a_folder_without_yaml_files_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is a folder, not a YAML file; give the YAML file, "
                                          r"e.g. .*config.yaml' \(there is no YAML file in"):
        load_config(tmp_path)


def test_the_cli_reports_a_folder_config_with_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(tmp_path)])
    assert result.exit_code == 2
    assert "is a folder, not a YAML file" in " ".join(result.output.split())
    assert "IsADirectoryError" not in result.output


def test_a_config_that_is_not_utf8_text(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"name: caf\xe9\n")  # Latin-1
    with pytest.raises(ConfigError, match=r"config file .*config.yaml' is not UTF-8 text "
                                          r"\(invalid continuation byte at byte 9\); give a "
                                          r"YAML file saved as UTF-8"):
        load_config(path)


def test_an_unreadable_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("name: run\n")

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)  # chmod does not stop root
    with pytest.raises(ConfigError, match=r"config file .*config.yaml' cannot be read: "
                                          r"permission denied; give yourself read access"):
        load_config(path)
