"""Unit tests for lmtune.tokenization: training WordPiece/BPE tokenizers and what they carry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from lmtune.errors import ConfigError
from lmtune.tokenization import batched, continuation_table, load_tokenizer, round_up, train_tokenizer

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "moby-dick"
CHAPTERS = sorted(SAMPLES.glob("chapter-*.txt"))
SENTENCE = "Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about."


def paragraphs(n_chapters: int = 6) -> list[str]:
    texts = []
    for path in CHAPTERS[:n_chapters]:
        texts.extend(p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip())
    return texts


@pytest.fixture(scope="module")
def texts() -> list[str]:
    assert len(CHAPTERS) >= 6
    return paragraphs()


@pytest.fixture(scope="module")
def bert_tok(texts):
    return train_tokenizer(texts, "bert", vocab_size=600, max_length=64)


@pytest.fixture(scope="module")
def roberta_tok(texts):
    return train_tokenizer(texts, "roberta", vocab_size=600, max_length=64)


@pytest.mark.parametrize(
    ("value", "multiple", "expected"),
    [(100, 64, 128), (128, 64, 128), (129, 64, 192), (1, 64, 64), (0, 64, 0), (8192, 64, 8192), (30522, 64, 30528), (5, 8, 8)],
)
def test_round_up(value, multiple, expected):
    assert round_up(value, multiple) == expected


def test_bert_special_tokens_have_the_bert_ids(bert_tok):
    assert bert_tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert (bert_tok.pad_token_id, bert_tok.unk_token_id, bert_tok.cls_token_id, bert_tok.sep_token_id, bert_tok.mask_token_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    assert sorted(bert_tok.all_special_ids) == [0, 1, 2, 3, 4]
    assert bert_tok.model_max_length == 64
    assert 100 < len(bert_tok) <= 600


def test_roberta_special_tokens_have_the_roberta_ids(roberta_tok):
    assert roberta_tok.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]) == [0, 1, 2, 3, 4]
    assert roberta_tok.pad_token_id == 1  # RoBERTa's position ids rely on padding_idx=1
    assert (roberta_tok.bos_token_id, roberta_tok.eos_token_id, roberta_tok.unk_token_id, roberta_tok.mask_token_id) == (0, 2, 3, 4)
    assert roberta_tok.cls_token_id == 0 and roberta_tok.sep_token_id == 2
    assert 256 < len(roberta_tok) <= 600  # the byte alphabet is always there


def test_bert_encoding_adds_cls_and_sep(bert_tok):
    ids = bert_tok(SENTENCE)["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3
    assert 2 not in ids[1:-1] and 3 not in ids[1:-1]
    pair = bert_tok("call me", "ishmael")["input_ids"]
    assert pair[0] == 2 and pair.count(3) == 2 and pair[-1] == 3


def test_bert_pair_encoding_has_token_type_ids_like_bert(bert_tok):
    # BertForSequenceClassification reads segment ids for pair tasks (data.text_pair_column); the
    # original BERT tokenizer returns them, and the module promises to behave like it
    pair = bert_tok("call me", "ishmael")
    assert "token_type_ids" in pair
    ids, types = pair["input_ids"], pair["token_type_ids"]
    first_sep = ids.index(3)
    assert types[: first_sep + 1] == [0] * (first_sep + 1)
    assert types[first_sep + 1 :] == [1] * (len(ids) - first_sep - 1)


def test_roberta_encoding_adds_bos_and_eos_and_knows_every_byte(roberta_tok):
    ids = roberta_tok(SENTENCE)["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    odd = "\u00fcber \u65e5\u672c \U0001f40b"  # not in the training text
    ids = roberta_tok(odd, add_special_tokens=False)["input_ids"]
    assert roberta_tok.unk_token_id not in ids
    assert roberta_tok.decode(ids) == odd


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_save_and_reload_with_auto_tokenizer_gives_identical_ids(tmp_path, texts, arch, bert_tok, roberta_tok):
    tok = bert_tok if arch == "bert" else roberta_tok
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    samples = [SENTENCE, texts[3], "whale, WHALE and Whale!", "a  b\n\nc"]
    for text in samples:
        assert again(text)["input_ids"] == tok(text)["input_ids"], text
    assert again("call me", "ishmael")["input_ids"] == tok("call me", "ishmael")["input_ids"]
    assert again.all_special_ids == tok.all_special_ids
    assert (again.pad_token_id, again.mask_token_id, again.cls_token_id, again.sep_token_id) == (
        tok.pad_token_id,
        tok.mask_token_id,
        tok.cls_token_id,
        tok.sep_token_id,
    )
    assert len(again) == len(tok)
    assert load_tokenizer(str(tmp_path)).get_vocab() == tok.get_vocab()


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_lowercase_option(texts, arch):
    lower = train_tokenizer(texts, arch, vocab_size=1000, lowercase=True)
    cased = train_tokenizer(texts, arch, vocab_size=1000, lowercase=False)
    assert lower("The WHALE")["input_ids"] == lower("the whale")["input_ids"]
    assert cased("The WHALE")["input_ids"] != cased("the whale")["input_ids"]

    def has_upper(tok) -> bool:
        # learned pieces only: byte-level BPE always holds every single byte, uppercase ones too
        learned = [t for t in tok.get_vocab() if t not in tok.all_special_tokens and len(t.lstrip("#\u0120")) > 1]
        return any(ch.isupper() for token in learned for ch in token if ch.isascii())

    assert not has_upper(lower)
    assert has_upper(cased)


def test_bert_continuation_table_marks_hash_pieces(bert_tok):
    vocab = bert_tok.get_vocab()
    size = 640
    table = continuation_table(bert_tok, size)
    assert table.dtype == np.bool_ and table.shape == (size,)
    assert any(t.startswith("##") for t in vocab)
    for token, idx in vocab.items():
        expected = token.startswith("##") and idx not in bert_tok.all_special_ids
        assert table[idx] == expected, token
    assert not table[len(bert_tok):].any()  # padding rows of the embedding table
    # a rare word splits into a start piece and continuation pieces
    ids = bert_tok("unaccountable", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1 and not table[ids[0]] and table[ids[1:]].all()


def test_roberta_continuation_table_marks_pieces_without_a_space(roberta_tok):
    vocab = roberta_tok.get_vocab()
    table = continuation_table(roberta_tok, len(roberta_tok))
    for token, idx in vocab.items():
        if idx in roberta_tok.all_special_ids:
            assert not table[idx], token
        else:
            assert table[idx] == (not token.startswith("\u0120")), token
    ids = roberta_tok(" unaccountable", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1 and not table[ids[0]] and table[ids[1:]].all()


def test_continuation_table_smaller_than_the_vocab_ignores_the_rest(bert_tok):
    table = continuation_table(bert_tok, 50)
    assert table.shape == (50,)
    assert not table[:5].any()  # special tokens


def test_load_tokenizer_rejects_a_missing_or_empty_dir(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        load_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="tokenizer.path"):
        load_tokenizer(str(tmp_path))


def test_batched():
    assert list(batched(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 3)) == []
    assert list(batched(["a", "b"], 2)) == [["a", "b"]]
