"""Guard and lock a run folder, so that nothing a user wrote is lost.

* A run writes only into a new folder, an empty one, or one that already holds a polytask
  run. A run is marked by `.polytask-run` (written when it first takes the folder); runs
  from before that marker are known by their `results.json` or `checkpoints/`. Any other
  non-empty folder is refused, naming the files that would be written over.
* The config file being trained is never written over: `config.yaml` is written only when
  its content changes, and a config file inside the run folder may not differ from what
  the run records.
* One process at a time writes a run: the marker file is also an exclusive OS lock
  (`fcntl.flock`), held for the whole training and released by the OS when the process
  ends, however it ends, so a lock is never stale. The holder's PID is written into it, so
  a second process names the first one.
* On resume the config must be the one the run started with, except for `RESUMABLE_KEYS`;
  a change to those is applied, written to `config.yaml` and recorded in `resumes.json`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from polytask.errors import ConfigError
from polytask.files import atomic_write_text, load_yaml, read_yaml

#: The file that marks a folder as a polytask run; also the lock file.
MARKER = ".polytask-run"

#: What a run writes at the top of its folder (what a non-run folder would lose).
WRITTEN = ("config.yaml", "splits.json", "metrics.jsonl", "results.json", "resumes.json",
           "report.html", "model", "best", "checkpoints", "tensorboard")

#: Config keys (dotted) that may change when a run resumes: they change how long it trains,
#: when it evaluates and stops, and what it shows, not what one step computes.
RESUMABLE_KEYS = ("train.max_steps", "train.eval_every", "train.patience", "train.callbacks",
                  "train.progress")


class _Unset:
    """The value of a key one of two configs does not have."""

    def __repr__(self) -> str:
        return "(unset)"


_UNSET = _Unset()


class RunDirInUse(ConfigError):
    """Another process is writing the run folder."""


def is_run(directory: Path) -> bool:
    """True for a folder that holds a polytask run (marked, or finished or checkpointed)."""
    checkpoints = directory / "checkpoints"
    return ((directory / MARKER).exists() or (directory / "results.json").exists()
            or (checkpoints.is_dir() and any(p.name.startswith("step-")
                                             for p in checkpoints.iterdir())))


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def check_target(directory: Path, config_path: Path | None = None) -> None:
    """Refuse a file, or a non-empty folder that is not a polytask run."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"run dir {directory} is a file, not a folder; choose another "
                          "--run-dir")
    if not directory.exists() or is_run(directory):
        return
    entries = sorted(p.name for p in directory.iterdir())
    if not entries:
        return
    at_risk = [name for name in entries if name in WRITTEN]
    if at_risk:
        danger = f"training would write over {', '.join(at_risk)}"
        if config_path is not None and any(_same_file(config_path, directory / name)
                                           for name in at_risk):
            danger += f" (including {config_path}, the config being trained)"
    else:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        danger = f"it holds {shown}, and training would mix its files with them"
    raise ConfigError(f"run dir {directory} is not empty and is not a polytask run: {danger}. "
                      "Choose a new or empty --run-dir, e.g. --run-dir runs/<name> (nothing "
                      "was written)")


def _normalised(dump: dict[str, Any]) -> Any:
    """The config as config.yaml stores it (tuples as lists, and so on)."""
    return load_yaml(yaml.safe_dump(dump, sort_keys=False))


def _saved_config(directory: Path) -> Any:
    path = directory / "config.yaml"
    return read_yaml(path) if path.exists() else None


def check_source(directory: Path, config_path: Path | None, dump: dict[str, Any]) -> None:
    """Refuse a config file inside the run folder that the run would write over."""
    if config_path is None or not directory.is_dir():
        return
    for name in WRITTEN:
        if not _same_file(config_path, directory / name):
            continue
        if name == "config.yaml" and _saved_config(directory) == _normalised(dump):
            return  # the run's own config, unchanged: it is read, never rewritten
        raise ConfigError(
            f"{config_path} is the run's own {name}, which polytask writes; copy it "
            f"elsewhere (cp {config_path} my.yaml), change the copy and pass that (nothing "
            "was written)")


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def config_differences(directory: Path, dump: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The keys (dotted) whose value in `dump` differs from the run's config.yaml:
    key -> (old, new), in key order; empty when the run has no config.yaml yet."""
    saved = _saved_config(directory)
    if saved is None:  # an old run killed before it wrote its config: nothing to compare
        return {}
    old, new = _flat(saved), _flat(_normalised(dump))
    return {key: (old.get(key, _UNSET), new.get(key, _UNSET))
            for key in sorted(set(old) | set(new))
            if old.get(key, _UNSET) != new.get(key, _UNSET)}


def config_changes(directory: Path, dump: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """`config_differences`, refused with a ConfigError listing them when one of the keys is
    not in RESUMABLE_KEYS."""
    changes = config_differences(directory, dump)
    refused = [key for key in changes if key not in RESUMABLE_KEYS]
    if refused:
        shown = "; ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise ConfigError(
            f"--resume: the config differs from the one {directory} was started with "
            f"({shown}). Only {', '.join(RESUMABLE_KEYS)} may change when a run resumes: "
            "undo the other changes, or train into a new --run-dir (nothing was changed)")
    return changes


def write_config(directory: Path, dump: dict[str, Any]) -> None:
    """Write config.yaml atomically, only when its content changes (comments survive)."""
    if _saved_config(directory) == _normalised(dump):
        return
    path = directory / "config.yaml"
    atomic_write_text(path, yaml.safe_dump(dump, sort_keys=False))


def record_resume(directory: Path, step: int, changes: dict[str, tuple[Any, Any]],
                  dump: dict[str, Any]) -> None:
    """Append this resume (step, time, changed keys old -> new) to resumes.json and, when
    keys changed, write the new config to config.yaml."""
    path = directory / "resumes.json"
    history = json.loads(path.read_text()) if path.exists() else []
    history.append({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "changed": {k: {"old": None if old is _UNSET else old,
                                    "new": None if new is _UNSET else new}
                                for k, (old, new) in changes.items()}})
    atomic_write_text(path, json.dumps(history, indent=1))
    if changes:
        write_config(directory, dump)


def _holder(path: Path) -> str:
    """Who holds the lock, as written into the lock file ("" while it is being written)."""
    try:
        holder = json.loads(path.read_text())
        return f"process {holder['pid']} ({holder['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _in_use(directory: Path) -> RunDirInUse:
    return RunDirInUse(f"run dir {directory} is in use by {_holder(directory / MARKER)}; wait "
                       "for it or choose another --run-dir")


def check_free(directory: Path) -> None:
    """Raise RunDirInUse when another process holds the folder's lock (writes nothing)."""
    path = directory / MARKER
    if not path.exists():
        return
    with path.open("rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(directory) from None
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _command() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return " ".join([name, *sys.argv[1:2]])


class RunLock:
    """Holds the exclusive lock of a run folder from `__enter__` to `__exit__`.

    Entering checks the folder (`check_target`), creates it and its marker, and takes the
    lock, or raises RunDirInUse naming the holder. `enabled=False` (every process but the
    first under torchrun) does nothing."""

    def __init__(self, directory: Path, enabled: bool = True) -> None:
        self.directory = directory
        self.enabled = enabled
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        check_target(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / MARKER, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _in_use(self.directory) from None
        holder = {"pid": os.getpid(), "command": _command(),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
