"""The model directory: its file names, atomic writes, and size-limited reads with errors naming the file.

Every reader and writer of ``config.json``, ``model.safetensors`` and ``tokenizer.json`` (the LM, the encoders,
the ``transformers`` wrappers, the CLI, the server, training) goes through here, as does every atomic file
write in the package (checkpoints, benchmark reports, conversation states). It imports nothing from ``retnet``
so that any layer can use it.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TRAINING_INFO_FILE = "training.json"

# Generous bounds: a config is a few hundred bytes, the largest public tokenizer.json files tens of MiB.
MAX_CONFIG_BYTES = 16 << 20
MAX_TOKENIZER_BYTES = 512 << 20


class CheckpointError(ValueError):
    """A model directory or a file in it that cannot be read; the message names the file (and field or tensor)."""


class MissingFileError(CheckpointError, FileNotFoundError):
    """A file a model directory needs is absent (also a ``FileNotFoundError``)."""


# ---------------------------------------------------------------------------------------------- writing
def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` to fill a temporary file next to ``path``, fsync it, move it into place and
    fsync the folder: after a crash at any point ``path`` is the old file or the complete new one. The
    temporary file is removed on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_leftover_temp_files(directory: str | os.PathLike, targets: tuple[str, ...] | None = None) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` left in ``directory`` when its process was killed
    mid-write (``.NAME.XXXXXXXX.tmp`` regular files, for every ``NAME`` or those in ``targets``; links and anything
    else are left alone). Only for files that one process writes; returns what was removed."""
    removed = []
    for path in Path(directory).glob(".*.tmp"):
        if targets is not None and not any(path.name.startswith(f".{t}.") for t in targets):
            continue
        if path.is_file() and not path.is_symlink() and _is_our_temp_name(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _is_our_temp_name(name: str) -> bool:
    """``.{target}.{random}.tmp`` as ``tempfile.mkstemp(prefix=f".{target}.", suffix=".tmp")`` names them."""
    parts = name[1:-4].rsplit(".", 1)
    return len(parts) == 2 and bool(parts[0]) and len(parts[1]) >= 8 and parts[1].replace("_", "").isalnum()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON (non-JSON values such as paths as strings) atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; platforms that cannot open or fsync a folder skip this."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- reading
def read_limited(
    path: str | os.PathLike, limit: int, *, what: str = "file", error: type[Exception] = CheckpointError
) -> bytes:
    """The bytes of the regular file ``path``, refusing one over ``limit`` bytes (or a device, a pipe ...)
    with ``error`` naming it, so an endless or huge file neither hangs nor exhausts memory."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise (MissingFileError if error is CheckpointError else error)(f"{what} not found: {path}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is not a regular file")
    if info.st_size > limit:
        raise error(f"{what} {path} is too large ({info.st_size} bytes; the limit is {limit})")
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:  # grew while being read
        raise error(f"{what} {path} is too large (over the limit of {limit} bytes)")
    return data


def read_text(
    path: str | os.PathLike, limit: int, *, what: str = "file", error: type[Exception] = CheckpointError
) -> str:
    """:func:`read_limited` decoded as UTF-8 (an error naming the file and byte offset otherwise)."""
    data = read_limited(path, limit, what=what, error=error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None


def parse_json_object(text: str, path: str | os.PathLike, *, what: str, error: type[Exception]) -> dict[str, Any]:
    """The JSON object in ``text`` (read from ``path``); errors name the file and line/column."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise error(f"{what} {path} is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a JSON object, not {type(data).__name__}")
    return data


def read_json_file(
    path: str | os.PathLike,
    *,
    what: str = "config file",
    limit: int = MAX_CONFIG_BYTES,
    error: type[Exception] = CheckpointError,
) -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` names the file when it is missing, too large, invalid or not an
    object."""
    return parse_json_object(read_text(path, limit, what=what, error=error), path, what=what, error=error)


def read_config_json(directory: str | os.PathLike) -> dict[str, Any]:
    """The raw ``config.json`` of a model directory (the one place that reads it; field checks are the
    config classes')."""
    return read_json_file(Path(directory) / CONFIG_FILE)


def read_tokenizer_json(path: str | os.PathLike) -> dict[str, Any]:
    """A ``tokenizer.json`` (``path`` is the file or its directory) as a JSON object, size-limited."""
    return read_json_file(tokenizer_path(path), what="tokenizer file", limit=MAX_TOKENIZER_BYTES)


def read_tokenizer(path: str | os.PathLike):
    """A Hugging Face ``tokenizers.Tokenizer`` from ``tokenizer.json`` (``path`` is the file or its
    directory), size-limited; :class:`CheckpointError` names the file when it is missing or not a tokenizer."""
    path = tokenizer_path(path)
    return parse_tokenizer(read_text(path, MAX_TOKENIZER_BYTES, what="tokenizer file"), path)


def parse_tokenizer(text: str, path: str | os.PathLike):
    """A ``tokenizers.Tokenizer`` from the text of ``tokenizer.json`` read from ``path`` (named in errors)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # the Rust library raises a bare Exception
        raise CheckpointError(f"{path} is not a valid tokenizer file: {str(exc).splitlines()[0]}") from None


def tokenizer_path(path: str | os.PathLike) -> Path:
    """``path/tokenizer.json`` for a model directory, ``path`` itself when it names a file."""
    path = Path(path)
    return path / TOKENIZER_FILE if path.is_dir() else path


# ---------------------------------------------------------------------------------------------- checks
def check_model_dir(directory: str | os.PathLike) -> Path:
    """``directory`` as a ``Path`` when it holds ``config.json`` and ``model.safetensors``; otherwise a
    :class:`CheckpointError` saying which."""
    path = Path(directory)
    if not path.exists():
        raise MissingFileError(f"model directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a file, not a model directory")
    # exists(), not is_file(): a config linked to a device is the reader's error ("not a regular file")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (path / name).exists()]
    if missing:
        raise CheckpointError(
            f"{str(path)!r} is not a model directory (needs {CONFIG_FILE} and {WEIGHTS_FILE}; "
            f"{' and '.join(missing)} missing)"
        )
    return path


# ---------------------------------------------------------------------------------------------- tokenizer_config.json
def _tokenizer_vocab(tokenizer_json: Path) -> dict[str, int]:
    data = read_tokenizer_json(tokenizer_json)
    vocab = dict(data.get("model", {}).get("vocab", {}) or {})
    vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", []) or []})
    return vocab


def write_tokenizer_config(
    directory: str | os.PathLike,
    *,
    model_max_length: int | None = None,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    unk_token: str | None = None,
) -> Path:
    """Write ``tokenizer_config.json`` (a ``PreTrainedTokenizerFast``) for the ``tokenizer.json`` in ``directory``.

    Special tokens, when given, must be tokens of the vocabulary (our tokenizers have none by default).
    Returns the path written. Raises ``FileNotFoundError`` when there is no ``tokenizer.json``.
    """
    directory = Path(directory)
    tokenizer_json = directory / TOKENIZER_FILE
    if not tokenizer_json.is_file():
        raise FileNotFoundError(f"no {TOKENIZER_FILE} in {str(directory)!r}: save the tokenizer first")
    vocab = _tokenizer_vocab(tokenizer_json)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "padding_side": "left",
        "add_bos_token": False,
        "add_eos_token": False,
    }
    if model_max_length is not None:
        if model_max_length < 1:
            raise ValueError(f"model_max_length must be >= 1, got {model_max_length}")
        config["model_max_length"] = int(model_max_length)
    for name, token in (
        ("bos_token", bos_token),
        ("eos_token", eos_token),
        ("pad_token", pad_token),
        ("unk_token", unk_token),
    ):
        if token is None:
            continue
        if token not in vocab:
            raise ValueError(f"{name} {token!r} is not a token of {tokenizer_json}")
        config[name] = token
    path = directory / TOKENIZER_CONFIG_FILE
    atomic_write_text(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return path
