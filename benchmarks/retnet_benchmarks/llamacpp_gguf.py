"""The equal-size Llama as GGUF files for llama.cpp, made with the converter llama.cpp ships.

``llama-cpp-python`` wheels hold the compiled library only; llama.cpp's ``convert_hf_to_gguf.py`` (with its
``conversion/`` package and ``gguf-py/``) comes with the sources: the ``llama-cpp-python`` sdist
(``vendor/llama.cpp/``) or a llama.cpp checkout. :func:`find_converter` takes either (or the script itself)
and extracts what the script needs from an sdist archive.

The converter recognises a byte-level BPE ``tokenizer.json`` only by hashing the token ids of a test string,
which no freshly made vocabulary matches, so the Llama is saved with a SentencePiece ``tokenizer.model``
(Llama's own format): the converter then writes llama.cpp's ``default`` pre-tokenizer. The benchmark feeds
token ids, so the tokenizer never enters a timing.
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from retnet.cli.errors import CLIError
from retnet.models.directory import atomic_write

CONVERTER = "convert_hf_to_gguf.py"
FLAG = "--llama-cpp-converter"
EXTRA = "pip install 'retnet[bench-llamacpp]'"
# import name -> distribution name, for the missing-dependency message
REQUIRED = {"llama_cpp": "llama-cpp-python", "gguf": "gguf", "sentencepiece": "sentencepiece"}
# what the converter script imports from beside itself
_CONVERTER_PARTS = (CONVERTER, "conversion/", "gguf-py/")


def require_dependencies(modules: dict[str, str] = REQUIRED) -> None:
    """Raise a :class:`CLIError` naming the optional extra when a package the llama.cpp side needs is absent."""
    missing = [dist for module, dist in modules.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise CLIError(f"the llama.cpp engines need {', '.join(missing)}: {EXTRA} (or choose --engines retnet-*)")


def _in_installed_package() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for candidate in (Path(root) / CONVERTER, Path(root) / "vendor" / "llama.cpp" / CONVERTER):
            if candidate.is_file():
                return candidate
    return None


def extract_converter(archive: Path, dest: Path) -> Path:
    """Extract the converter, ``conversion/`` and ``gguf-py/`` from a source archive; the script's path."""
    with tarfile.open(archive) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
        scripts = sorted((n for n in names if n == CONVERTER or n.endswith("/" + CONVERTER)), key=len)
        if not scripts:
            raise CLIError(f"{FLAG} {archive}: the archive holds no {CONVERTER} (expected the llama-cpp-python sdist)")
        prefix = scripts[0][: -len(CONVERTER)]
        wanted = [
            m
            for m in tar.getmembers()
            if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(_CONVERTER_PARTS)
        ]
        tar.extractall(dest, members=wanted, filter="data")
    return dest / prefix / CONVERTER


def find_converter(path: str | None, work_dir: Path) -> Path:
    """llama.cpp's converter script from ``--llama-cpp-converter`` (the llama-cpp-python sdist ``.tar.gz``, a
    llama.cpp or llama-cpp-python source folder, or the script), else from inside the installed package."""
    if path is None:
        found = _in_installed_package()
        if found is None:
            raise CLIError(
                f"llama.cpp's {CONVERTER} is not in the installed llama_cpp package: pass {FLAG} with the "
                "llama-cpp-python sdist (.tar.gz), a llama.cpp checkout or the script"
            )
        return found
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{FLAG} {path}: no such file or folder")
    if p.is_dir():
        for candidate in (p / CONVERTER, p / "vendor" / "llama.cpp" / CONVERTER):
            if candidate.is_file():
                return candidate
        raise CLIError(f"{FLAG} {path}: the folder holds neither {CONVERTER} nor vendor/llama.cpp/{CONVERTER}")
    if p.name == CONVERTER:
        return p
    if tarfile.is_tarfile(p):
        return extract_converter(p, work_dir / "llama.cpp-converter")
    raise CLIError(f"{FLAG} {path}: expected the llama-cpp-python sdist (.tar.gz), a source folder or {CONVERTER}")


def _pseudo_words(count: int, seed: int) -> list[str]:
    """Deterministic lines of made-up words: text for a SentencePiece vocabulary with many distinct pieces."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    lines = []
    for _ in range(count):
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(12)]
        lines.append(" ".join(words))
    return lines


def write_sentencepiece_tokenizer(model_dir: Path, vocab_size: int, seed: int = 0) -> int:
    """Train a byte-fallback SentencePiece BPE ``tokenizer.model`` of at most ``vocab_size`` pieces into
    ``model_dir`` (``<unk>``, ``<s>``, ``</s>`` at 0, 1, 2 as in Llama); returns its size. The converter pads a
    smaller vocabulary to the config's ``vocab_size`` with unused entries."""
    import io

    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_pseudo_words(20000, seed)),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    data = buffer.getvalue()
    atomic_write(model_dir / "tokenizer.model", lambda tmp: Path(tmp).write_bytes(data))
    return spm.SentencePieceProcessor(model_proto=data).vocab_size()


def save_llama(llama: Any, model_dir: Path, seed: int = 0) -> int:
    """Save the ``LlamaForCausalLM`` as a Hugging Face folder (safetensors) with a SentencePiece tokenizer;
    returns the tokenizer's size."""
    llama.save_pretrained(model_dir, safe_serialization=True)
    return write_sentencepiece_tokenizer(model_dir, llama.config.vocab_size, seed)


def convert(converter: Path, model_dir: Path, outtype: str, outfile: Path, timeout_s: float = 1800) -> Path:
    """Run llama.cpp's converter on ``model_dir`` (``outtype`` ``f32`` or ``q8_0``) in its own process."""
    cmd = [sys.executable, str(converter), str(model_dir), "--outtype", outtype, "--outfile", str(outfile)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise CLIError(f"{CONVERTER} --outtype {outtype} did not finish in {timeout_s:.0f} s") from exc
    if proc.returncode != 0 or not outfile.is_file():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CLIError(f"{CONVERTER} --outtype {outtype} failed (exit code {proc.returncode}): {tail[:300]}")
    return outfile
