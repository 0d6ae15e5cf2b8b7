"""Files written safely: atomically, with a clear error when storage runs out, and inside
the folder they belong to.

- `writing(path)` yields a temporary path beside `path` (write a file or a folder there);
  it is renamed onto `path` when the block succeeds and removed when it fails, so a failed
  write never leaves a half-written file and never replaces the previous good one.
- A write that fails because the disk is full (ENOSPC), a quota is used up (EDQUOT) or a
  file size limit is reached (EFBIG) becomes a `StorageError` naming the file, however the
  writing library reported it: an OSError, safetensors' "... (os error 28)", or torch's
  "unexpected pos" (whose OSError, when torch writes to a Python file, is kept as context).
- `load_yaml(text)` / `read_yaml(path)` are the one way polytask reads YAML (configs, run
  files, bench files): `1e-3` is a float as in YAML 1.2, and a key given twice is an error.
- `cache_dir(*parts)` is the one folder polytask caches derived data in: `$POLYTASK_CACHE`,
  else ``~/.cache/polytask``.
- `plain_name` checks a user-given name (task, run) that becomes a file or folder name, and
  `inside(folder, *parts)` joins such names onto a folder, refusing a path that leaves it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from polytask.errors import ConfigError, StorageError

#: errno of a write that failed for lack of storage -> what the user reads.
_STORAGE_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit exceeded",
}
#: How torch.save words a short write when it does not keep the OSError behind it.
_TORCH_SHORT_WRITE = ("unexpected pos", "PytorchStreamWriter failed")
#: How Rust libraries (safetensors) print an errno: "No space left on device (os error 28)".
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")

DEFAULT_HINT = "free some space there (or write to another disk) and run again"

_NAME = re.compile(r"\w[\w.-]*")
_NAME_RULE = "use letters, digits, _, - and . (no /, \\ or ..; not starting with . or -)"


def _storage_errno(error: BaseException) -> int | None:
    """The errno of a storage failure behind `error` (following causes and contexts)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = current.errno if isinstance(current, OSError) else None
        if code is None:
            match = _RUST_OS_ERROR.search(str(current))
            code = int(match.group(1)) if match else None
        if code in _STORAGE_ERRORS:
            return code
        current = current.__cause__ or current.__context__
    if isinstance(error, RuntimeError) and any(m in str(error) for m in _TORCH_SHORT_WRITE):
        return errno.ENOSPC  # torch wrote to a path itself and kept no errno
    return None


@contextmanager
def reporting(path: str | Path, hint: str = DEFAULT_HINT) -> Iterator[None]:
    """Turn a storage failure inside the block into a `StorageError` naming `path`."""
    try:
        yield
    except StorageError:
        raise  # already names its file
    except Exception as error:
        code = _storage_errno(error)
        if code is None:
            raise
        raise StorageError(f"{_STORAGE_ERRORS[code]} while writing {path}; {hint}") from error


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace(tmp: Path, path: Path) -> None:
    if tmp.is_dir() and path.is_dir():
        shutil.rmtree(path)  # os.replace cannot replace a folder that has files
    os.replace(tmp, path)


@contextmanager
def writing(path: str | Path, hint: str = DEFAULT_HINT) -> Iterator[Path]:
    """A temporary path beside `path` to write a file or a folder at; renamed onto `path`
    when the block succeeds, removed when it fails (storage failures as `StorageError`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with reporting(path, hint):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove(tmp)  # left by a process of the same id that was killed
            yield tmp
            _replace(tmp, path)
        except BaseException:
            _remove(tmp)
            raise


def atomic_write_bytes(path: str | Path, data: bytes, hint: str = DEFAULT_HINT) -> None:
    """Write `data` to `path` atomically (temp file, fsync, rename)."""
    with writing(path, hint) as tmp, tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: str | Path, text: str, hint: str = DEFAULT_HINT) -> None:
    """Write `text` (UTF-8) to `path` atomically (temp file, fsync, rename)."""
    atomic_write_bytes(path, text.encode("utf-8"), hint)


def plain_name(value: str, what: str) -> str:
    """`value` if it can be a file or folder name on its own; else a ValueError whose message
    says what is allowed and suggests a fixed name (`what`: e.g. "task name")."""
    if _NAME.fullmatch(value) and ".." not in value:
        return value
    suggestion = re.sub(r"[^\w.-]+|\.{2,}", "_", value).strip("._-") or f"{what.split()[0]}_1"
    raise ValueError(f"a {what} becomes a file or folder name, so {_NAME_RULE}, "
                     f"e.g. {suggestion!r}")


def inside(folder: str | Path, *parts: str) -> Path:
    """`folder / parts...`; a ConfigError if the result is not strictly inside `folder`
    (a part that is absolute or climbs out with `..`)."""
    path = Path(folder).joinpath(*parts)
    base = os.path.abspath(folder)
    target = os.path.abspath(path)
    if os.path.commonpath([base, target]) != base or target == base:
        raise ConfigError(f"{'/'.join(parts)!r} leads outside {str(folder)!r}; a name that "
                          f"becomes a path must be a plain name: {_NAME_RULE}")
    return path


class _Loader(yaml.SafeLoader):
    """PyYAML (YAML 1.1) reads `1e-3` as a string; read it as a float, as YAML 1.2 does,
    so method hyperparameters (which pydantic does not coerce) get numbers."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _unique_keys(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    """A mapping whose keys are unique: PyYAML would silently keep the last of two."""
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first + 1}); keep one",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys)


def load_yaml(text: str) -> Any:
    """Parse YAML text the polytask way (YAML 1.2 floats, duplicate keys refused); raises
    `yaml.YAMLError` for the caller to name its source."""
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: str | Path) -> Any:
    """The YAML file at `path`, parsed as `load_yaml` does; a ConfigError naming the file
    when it is not valid YAML."""
    try:
        return load_yaml(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}; fix the file") from None


def cache_dir(*parts: str) -> Path:
    """polytask's cache folder (`$POLYTASK_CACHE`, else ``~/.cache/polytask``), joined with
    `parts` (e.g. ``cache_dir("suites")``)."""
    root = os.environ.get("POLYTASK_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "polytask"
    return base.joinpath(*parts)
