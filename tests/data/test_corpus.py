from pathlib import Path

import pytest

from retnet.data.corpus import CorpusError, embedded_dir, load_corpus, split_corpus


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_embedded_corpus_is_the_shakespeare_plays():
    corpus = load_corpus()
    assert len(corpus.documents) == len(list(embedded_dir().rglob("*.md"))) >= 36
    assert corpus.num_bytes > 4_000_000
    assert any("hamlet" in d.name for d in corpus.documents)
    assert "ROMEO" in next(d.text for d in corpus.documents if "romeo-and-juliet" in d.name)


def test_files_folders_and_globs(tmp_path):
    a = _write(tmp_path / "a.txt", "alpha\n")
    _write(tmp_path / "sub" / "b.md", "beta\n")
    _write(tmp_path / "sub" / "ignored.bin", "gamma\n")
    assert [d.text for d in load_corpus([str(a)]).documents] == ["alpha\n"]
    assert [d.text for d in load_corpus([str(tmp_path / "sub")]).documents] == ["beta\n"]
    names = [Path(d.name).name for d in load_corpus([str(tmp_path / "**" / "*.*")]).documents]
    assert names == sorted(names) and set(names) == {"a.txt", "b.md", "ignored.bin"}
    # the same file named twice is read once
    assert len(load_corpus([str(a), str(a)]).documents) == 1


@pytest.mark.parametrize("kind", ["missing", "glob", "empty-file", "empty-folder"])
def test_bad_corpus_is_named(tmp_path, kind):
    if kind == "missing":
        source = str(tmp_path / "nope.txt")
    elif kind == "glob":
        source = str(tmp_path / "*.nothing")
    elif kind == "empty-file":
        source = str(_write(tmp_path / "empty.txt", "  \n\n"))
    else:
        (tmp_path / "d").mkdir()
        source = str(tmp_path / "d")
    with pytest.raises(CorpusError, match=r"nope\.txt|\*\.nothing|empty\.txt|'.*d'"):
        load_corpus([source])


def test_split_is_deterministic_disjoint_and_samples_every_document(tmp_path):
    docs = [_write(tmp_path / f"{i}.txt", "".join(f"doc{i} line {j}\n" for j in range(200))) for i in range(3)]
    corpus = load_corpus([str(p) for p in docs])
    train, val = split_corpus(corpus, 0.1)
    assert (train, val) == split_corpus(load_corpus([str(p) for p in docs]), 0.1)
    for i in range(3):
        assert f"doc{i} line 199" in val and f"doc{i} line 199" not in train
        assert f"doc{i} line 0\n" in train and f"doc{i} line 0\n" not in val
    train_lines, val_lines = set(train.splitlines()) - {""}, set(val.splitlines()) - {""}
    assert not train_lines & val_lines
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15
    with pytest.raises(ValueError, match="val_fraction"):
        split_corpus(corpus, 1.5)
