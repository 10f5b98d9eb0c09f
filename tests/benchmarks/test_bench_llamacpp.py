"""``retnet bench llamacpp`` without llama.cpp: the RetNet engines at toy size, the report, the summary's
ratios, finding the converter in an sdist, and the errors when llama.cpp's side is missing."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from retnet.cli.errors import CLIError
from retnet.cli.main import main
from retnet_benchmarks import bench_llamacpp as b
from retnet_benchmarks import llamacpp_gguf as g


def _main(monkeypatch, argv):
    monkeypatch.setattr(sys, "argv", ["retnet", *argv])
    return main(argv)


def test_retnet_engines_smoke(tmp_path, monkeypatch):
    argv = ["bench", "llamacpp", "--tiny", "--in-process", "--engines", *b.RETNET_ENGINES, "--contexts", "16,48"]
    argv += ["--long-contexts", "96", "--prefill-block", "16", "--warmup", "1", "--steps", "2", "--prefill-rounds", "2"]
    assert _main(monkeypatch, [*argv, "--out-dir", str(tmp_path), "--note", "toy run"]) == 0
    data = json.loads((tmp_path / "llamacpp.json").read_text())
    assert data["command"].startswith("retnet bench llamacpp") and "processor" in data["machine"]
    assert all((tmp_path / f"llamacpp.{ext}").stat().st_size > 0 for ext in ("md", "png"))
    assert "toy run" in (tmp_path / "llamacpp.md").read_text()
    rows = [r for r in data["rows"] if r["mode"] == "own process"]
    # every engine again in one process at each of --contexts, timed in turn (the summary's ratios come from these)
    paired = [r for r in data["rows"] if r["mode"] == "interleaved"]
    assert sorted((r["engine"], r["context"]) for r in paired) == sorted(
        (e, c) for e in b.RETNET_ENGINES for c in (16, 48)
    )
    for r in paired:
        assert "error" not in r and r["step_ms"] > 0 and len(r["step_times_ms"]) == 2
        assert r["prefill_tokens_per_s"] == pytest.approx(r["context"] / r["prefill_s"])
        assert len(r["prefill_round_tokens_per_s"]) == 2
        assert r["prefill_tokens_per_s"] == pytest.approx(min(r["prefill_round_tokens_per_s"]))  # upper middle time
    assert data["summary"]["ratios_from"] == "interleaved"
    # the long context is retnet-f32's only
    assert [r["context"] for r in rows if r["engine"] == "retnet-f32"] == [16, 48, 96]
    assert "not_run" not in data["summary"]
    for engine in ("retnet-compiled", "retnet-int8"):
        assert [r["context"] for r in rows if r["engine"] == engine] == [16, 48]
    for r in rows:
        assert "error" not in r
        # the int8 engine runs on int8 weights (a quarter of the linear layers' float32 bytes), the others not
        assert ("int8_weight_mib" in r) == (r["engine"] == "retnet-int8")
        if r["engine"] == "retnet-int8":
            assert 0 < r["int8_weight_mib"] * b.MIB < r["params"] * 4 / 3
        # only the compiled engine compiles, in the warm-up (plus the products timing at construction, inside
        # load_s): its cost is reported apart from the timed steps (in one process torch.compile's cache serves
        # the later contexts, so the first one pays the cost)
        if r["engine"] == "retnet-compiled":
            assert 0 < r["compile_s"] <= r["first_step_s"] + r["load_s"]
            if r["context"] == 16:
                assert r["compile_s"] * 1e3 > 5 * max(r["step_times_ms"])
        else:
            assert r["compile_s"] is None
        assert r["step_ms"] > 0 and abs(r["tokens_per_s"] - 1e3 / r["step_ms"]) < 1e-9 * r["tokens_per_s"]
        assert r["prefill_tokens_per_s"] > 0 and len(r["step_times_ms"]) == 2
    f32 = {r["context"]: r for r in rows if r["engine"] == "retnet-f32"}
    # each context is prefilled from empty in its own case
    for c, r in f32.items():
        assert r["prefill_tokens_per_s"] == pytest.approx(c / r["prefill_s"])
    assert f32[16]["prefill_tail_tokens_per_s"] == pytest.approx(f32[16]["prefill_tokens_per_s"])
    assert "retnet_f32_prefill_rate_at_96_over_16 (goal >= 0.9, flat)" in data["summary"]


def _row(engine, context, step_ms, prefill, tail=None, mode="own process"):
    return dict(
        engine=engine,
        context=context,
        mode=mode,
        step_ms=step_ms,
        prefill_tokens_per_s=prefill,
        prefill_tail_tokens_per_s=tail,
    )


def test_summary_ratios_against_the_goals():
    rows = [
        _row("llamacpp-f32", 1024, 50.0, 200.0),
        _row("llamacpp-f32", 8192, 150.0, 100.0),
        _row("llamacpp-q8_0", 1024, 20.0, 300.0),
        _row("llamacpp-q8_0", 8192, 60.0, 150.0),
        _row("retnet-f32", 1024, 40.0, 400.0, 400.0),
        _row("retnet-f32", 8192, 44.0, 390.0, 380.0),
        _row("retnet-int8", 1024, 30.0, 500.0),
        _row("retnet-int8", 8192, 30.0, 500.0),
        {"engine": "retnet-compiled", "context": 1024, "error": "skipped: --max-minutes 1 reached"},
    ]
    s = b.summarize(rows)
    assert s["f32_speedup_vs_llamacpp_f32_at_1024 (goal > 1)"] == pytest.approx(50 / 40)
    assert s["f32_speedup_vs_llamacpp_f32_at_8192 (goal > 1)"] == pytest.approx(150 / 44)
    assert s["int8_step_over_q8_0_at_1024 (goal <= 1.2)"] == pytest.approx(30 / 20)
    assert s["int8_step_over_q8_0_at_8192 (goal < 1)"] == pytest.approx(30 / 60)
    assert s["prefill_speedup_vs_llamacpp_f32_at_1024 (goal >= 1.5)"] == pytest.approx(2.0)
    assert s["retnet_f32_prefill_rate_at_8192_over_1024 (goal >= 0.9, flat)"] == pytest.approx(380 / 400)
    assert s["not_run"] == "retnet-compiled: skipped: --max-minutes 1 reached"
    assert not any(k.startswith("compiled_speedup") for k in s)


def test_summary_takes_the_ratios_from_the_interleaved_rows():
    """Engines timed in turn in one process give the ratios; the own-process rows still give the flatness."""
    rows = [
        _row("llamacpp-f32", 1024, 50.0, 200.0),
        _row("retnet-f32", 1024, 60.0, 400.0, 400.0),
        _row("retnet-f32", 8192, 44.0, 390.0, 380.0),
        _row("llamacpp-f32", 1024, 30.0, 250.0, mode="interleaved"),
        _row("retnet-f32", 1024, 20.0, 300.0, mode="interleaved"),
        _row("retnet-int8", 1024, 10.0, 600.0, mode="interleaved"),
    ]
    s = b.summarize(rows)
    assert s["ratios_from"] == "interleaved"
    assert s["f32_speedup_vs_llamacpp_f32_at_1024 (goal > 1)"] == pytest.approx(30 / 20)
    assert s["prefill_speedup_vs_llamacpp_f32_at_1024 (goal >= 1.5)"] == pytest.approx(300 / 250)
    assert s["int8_prefill_speedup_vs_llamacpp_f32_at_1024"] == pytest.approx(600 / 250)
    assert s["retnet_f32_prefill_rate_at_8192_over_1024 (goal >= 0.9, flat)"] == pytest.approx(380 / 400)
    assert b.summarize(rows[:3])["ratios_from"] == "own process"


def test_interleaved_prefill_rounds_start_at_the_next_engine_and_each_starts_from_empty(monkeypatch):
    calls = []

    def fake_engine(engine, *args):
        prefill = lambda ids: calls.append((engine, "prefill", ids.shape[1]))  # noqa: E731
        decode = lambda token: calls.append((engine, "step"))  # noqa: E731
        return prefill, decode, {"reset": lambda: calls.append((engine, "reset"))}

    monkeypatch.setattr(b, "_engine", fake_engine)
    out = b.paired_case(["a", "b", "c"], {"vocab_size": 7}, 4, 2, 0, 1, 1, {}, prefill_rounds=3)
    prefills = [c for c in calls if c[1] != "step"][6:]  # after each engine's warm-up block and reset
    assert prefills == [
        *[(e, "reset") for e in "abc"], *[(e, "prefill", 2) for e in "abcabc"],
        *[(e, "reset") for e in "bca"], *[(e, "prefill", 2) for e in "bcabca"],
        *[(e, "reset") for e in "cab"], *[(e, "prefill", 2) for e in "cabcab"],
    ]  # fmt: skip
    assert all(len(r["prefill_round_tokens_per_s"]) == 3 for r in out["engines"].values())


def test_retnet_prefill_block_sets_retnets_calls_and_the_turns_cover_the_larger_block(monkeypatch):
    calls = []

    def fake_engine(engine, *args):
        prefill = lambda ids: calls.append((engine, ids.shape[1]))  # noqa: E731
        return prefill, lambda token: None, {"reset": lambda: None}

    monkeypatch.setattr(b, "_engine", fake_engine)
    b.paired_case(["llamacpp-f32", "retnet-f32"], {"vocab_size": 7}, 10, 2, 0, 1, 1, {}, retnet_prefill_block=4)
    prefills = calls[2:]  # after each engine's warm-up block
    assert prefills == [
        *[("llamacpp-f32", 2)] * 2, ("retnet-f32", 4),
        *[("llamacpp-f32", 2)] * 2, ("retnet-f32", 4),
        ("llamacpp-f32", 2), ("retnet-f32", 2),
    ]  # fmt: skip
    assert b.block_of("llamacpp-q8_0", 512, 1024) == 512 and b.block_of("retnet-int8", 512, None) == 512


def test_cases_run_every_engine_at_a_context_before_the_next_context():
    assert b.engine_contexts("retnet-f32", [8192, 1024], [131072]) == [1024, 8192, 131072]
    assert b.engine_contexts("llamacpp-f32", [8192, 1024], [131072]) == [1024, 8192]
    got = b.cases(["llamacpp-f32", "retnet-f32"], [8192, 1024], [131072])
    assert got == [
        ("llamacpp-f32", 1024),
        ("retnet-f32", 1024),
        ("llamacpp-f32", 8192),
        ("retnet-f32", 8192),
        ("retnet-f32", 131072),
    ]


def test_tail_rate_covers_the_last_blocks():
    assert b.tail_rate([512, 512, 512, 100], [1.0, 1.0, 2.0, 0.5], 600) == pytest.approx(612 / 2.5)
    assert b.tail_rate([512, 512], [1.0, 3.0], 4096) == pytest.approx(1024 / 4.0)


def test_missing_dependency_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(g.importlib.util, "find_spec", lambda name: None)
    argv = ["bench", "llamacpp", "--tiny", "--in-process", "--engines", "llamacpp-f32", "--out-dir", str(tmp_path)]
    assert _main(monkeypatch, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "llama-cpp-python, gguf, sentencepiece" in err
    assert "pip install 'retnet[bench-llamacpp]'" in err
    assert not (tmp_path / "llamacpp.json").exists()


def _tar(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_converter_is_extracted_from_an_sdist(tmp_path):
    top = "llama_cpp_python-0.0.0/vendor/llama.cpp/"
    sdist = _tar(
        tmp_path / "sdist.tar.gz",
        {
            top + "convert_hf_to_gguf.py": "print('converter')\n",
            top + "conversion/__init__.py": "",
            top + "gguf-py/gguf/__init__.py": "",
            top + "ggml/src/big.c": "int x;\n",
            "llama_cpp_python-0.0.0/llama_cpp/__init__.py": "",
        },
    )
    script = g.find_converter(str(sdist), tmp_path / "work")
    assert script.read_text() == "print('converter')\n" and script.name == g.CONVERTER
    assert (script.parent / "conversion" / "__init__.py").is_file()
    assert (script.parent / "gguf-py" / "gguf" / "__init__.py").is_file()
    assert not (script.parent / "ggml").exists()  # only what the script imports
    assert g.find_converter(str(script.parent), tmp_path) == script  # a source folder
    assert g.find_converter(str(script), tmp_path) == script


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: str(tmp / "absent.tar.gz"), "no such file or folder"),
        (lambda tmp: str(_tar(tmp / "other.tar.gz", {"pkg/setup.py": ""})), "holds no convert_hf_to_gguf.py"),
        (lambda tmp: str(tmp), "holds neither convert_hf_to_gguf.py"),
    ],
)
def test_converter_errors_name_the_flag(tmp_path, make, message):
    with pytest.raises(CLIError, match=message) as exc:
        g.find_converter(make(tmp_path), tmp_path / "work")
    assert "--llama-cpp-converter" in str(exc.value)


def test_no_converter_flag_and_none_installed_names_the_flag(tmp_path, monkeypatch):
    monkeypatch.setattr(g, "_in_installed_package", lambda: None)
    with pytest.raises(CLIError, match="pass --llama-cpp-converter"):
        g.find_converter(None, tmp_path)
