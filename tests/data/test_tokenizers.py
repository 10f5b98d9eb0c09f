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


@given(st.text(max_size=40), st.sampled_from(["byte", "bpe", "served"]))
def test_detokenizer_reassembles_utf8_token_by_token(bpe, text, kind):
    """Streamed token by token (characters split across tokens included), the text comes back exactly."""
    from retnet.serving.random_model import byte_tokenizer

    tok = {"byte": Tokenizer.byte(), "bpe": bpe, "served": Tokenizer(byte_tokenizer(), "bpe")}[kind]
    ids = tok.encode(text)
    detok = tok.detokenizer()
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)  # an incomplete character is held back, never replaced


def test_detokenizer_skips_end_of_sequence_ids_and_flushes_an_incomplete_character():
    tok = Tokenizer.byte()
    detok = tok.detokenizer(skip_ids={0})
    assert detok.push(ord("a")) == "a" and detok.push(0) == ""
    assert detok.push(0xC3) == "" and detok.flush() == "\ufffd"


def test_end_of_sequence_ids_come_from_known_names_and_the_config():
    from retnet.serving.random_model import byte_tokenizer

    assert Tokenizer.byte().eos_token_ids == frozenset()
    assert Tokenizer.byte().encode("<|endoftext|>") != [256]
    served = Tokenizer(byte_tokenizer(), "bpe")
    assert served.eos_token_ids == {256}  # <|endoftext|>, by name
    assert Tokenizer(byte_tokenizer(), "bpe", eos_token_id=10).eos_token_ids == {10, 256}
    assert served.encode("a<|endoftext|>") == [97, 256] and served.decode([97, 256]) == "a<|endoftext|>"


def test_sentencepiece_style_vocabularies_decode_to_their_bytes(tmp_path):
    """A converted model's tokenizer.json need not be byte-level: ``▁`` is a space and ``<0xNN>`` a byte."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    for t in ["▁", "a", "b", "▁a", "ab", "▁ab", "c", "é"]:
        vocab[t] = len(vocab)
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[("▁", "a"), ("a", "b"), ("▁a", "b")], byte_fallback=True))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path)
    for text in ("ab ab é c", "ß ab", "é"):
        ids = tok.encode(text)
        assert tok.decode(ids) == hf.decode(ids) == text
        detok = tok.detokenizer()
        assert "".join(detok.push(i) for i in ids) + detok.flush() == text
