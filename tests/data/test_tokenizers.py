import pytest
from hypothesis import given
from hypothesis import strategies as st

from retnet.data.corpus import load_corpus, split_corpus
from retnet.data.tokenizers import Tokenizer, byte_to_char

TEXT = (
    "**ROMEO**  \nBut, soft! what light through yonder window breaks?  \nIt is the east, and Juliet is the sun.\n\n"
    * 20
)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train_bpe([TEXT, "naïve café — ünïcödé ✓\n"], vocab_size=300)


def test_byte_alphabet_is_a_bijection():
    alphabet = byte_to_char()
    assert len(set(alphabet)) == 256


@given(st.text(max_size=200))
def test_byte_tokenizer_is_utf8(text):
    tok = Tokenizer.byte()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.hf.encode(text, add_special_tokens=False).ids == ids  # the saved HF tokenizer agrees
    assert tok.decode(ids) == text


@given(st.text(max_size=200))
def test_bpe_round_trip_and_byte_lengths(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert sum(bpe.byte_lengths()[i] for i in ids) == len(text.encode("utf-8"))


def test_bpe_learns_merges_and_compresses(bpe):
    assert bpe.kind == "bpe" and bpe.vocab_size == 300
    assert len(bpe.encode(TEXT)) < len(TEXT.encode()) / 2


def test_long_text_encoding_matches_decoding():
    corpus = load_corpus()
    train, _ = split_corpus(corpus)
    text = train[:200_000]
    tok = Tokenizer.train_bpe([text], vocab_size=512)
    ids = tok.encode(text)  # paragraph-parallel path (> 64K characters)
    assert tok.decode(ids) == text
    assert ids == tok.encode(text)


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_save_and_load_keep_kind_and_ids(tmp_path, bpe, kind):
    tok = Tokenizer.byte() if kind == "byte" else bpe
    path = tok.save(tmp_path)
    assert path.name == "tokenizer.json"
    back = Tokenizer.load(tmp_path)
    assert back.kind == kind and back.vocab_size == tok.vocab_size
    assert back.encode(TEXT) == tok.encode(TEXT)


def test_saved_file_loads_in_transformers(tmp_path, bpe):
    transformers = pytest.importorskip("transformers")
    bpe.save(tmp_path)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert fast(TEXT[:100])["input_ids"] == bpe.encode(TEXT[:100])


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.load(tmp_path)
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train_bpe(["abc"], vocab_size=100)
