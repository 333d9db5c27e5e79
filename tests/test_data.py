"""Unit tests for lmtune.data: finding and checking files, loading texts, splitting, packing, masking."""

from __future__ import annotations

import copy

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset

from lmtune import data
from lmtune.data import (
    Masker,
    batch_generator,
    block_batches,
    check_text_file,
    expand_sources,
    load_texts,
    pack_blocks,
    split_validation,
)
from lmtune.errors import DataError
from lmtune.tokenization import train_tokenizer

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "moby-dick"
CHAPTERS = sorted(SAMPLES.glob("chapter-*.txt"))


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> str:
    """A datasets cache private to the test."""
    path = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(path))
    return str(path)


def moby_paragraphs(n_chapters: int = 3) -> list[str]:
    texts = []
    for path in CHAPTERS[:n_chapters]:
        texts.extend(p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip())
    return texts


@pytest.fixture(scope="module")
def bert_tok():
    return train_tokenizer(moby_paragraphs(6), "bert", vocab_size=500, max_length=64)


@pytest.fixture(scope="module")
def roberta_tok():
    return train_tokenizer(moby_paragraphs(6), "roberta", vocab_size=500, max_length=64)


# ----------------------------------------------------------------------------------------------
# expand_sources


def test_expand_files_dirs_and_globs_sorted_and_deduplicated(tmp_path):
    corpus = tmp_path / "corpus"
    for name in ["b.txt", "a.txt", "c.jsonl", "notes.md", ".hidden.txt", "sub/d.csv", "sub/e.TXT"]:
        write(corpus / name, "x\n")
    extra = write(tmp_path / "extra.parquet", "x")
    files, hub = expand_sources(
        [str(corpus / "*.txt"), str(corpus), str(extra), str(corpus / "a.txt"), str(corpus / "*.txt")], "data.train"
    )
    assert hub == []
    expected_glob = [corpus / "a.txt", corpus / "b.txt"]  # a glob skips dot files and other suffixes
    expected_dir = sorted([corpus / "a.txt", corpus / "b.txt", corpus / "c.jsonl", corpus / "sub/d.csv", corpus / "sub/e.TXT"])
    assert files[:2] == expected_glob
    assert files == list(dict.fromkeys(expected_glob + expected_dir + [extra]))
    assert len(files) == len(set(files)) == 6
    assert corpus / "notes.md" not in files and corpus / ".hidden.txt" not in files


def test_expand_recursive_glob(tmp_path):
    write(tmp_path / "x" / "y" / "deep.txt", "x")
    write(tmp_path / "top.txt", "x")
    files, _ = expand_sources([str(tmp_path / "**" / "*.txt")], "data.train")
    assert files == sorted([tmp_path / "x" / "y" / "deep.txt", tmp_path / "top.txt"])


def test_expand_unsupported_suffix(tmp_path):
    path = write(tmp_path / "notes.md", "# hi\n")
    with pytest.raises(DataError) as info:
        expand_sources([str(path)], "data.train")
    message = str(info.value)
    assert "data.train" in message and "notes.md" in message and "'.md'" in message and ".jsonl" in message


def test_expand_empty_file(tmp_path):
    path = write(tmp_path / "empty.txt", "")
    with pytest.raises(DataError, match="is empty") as info:
        expand_sources([str(path)], "data.validation")
    assert "data.validation" in str(info.value) and "empty.txt" in str(info.value)


def test_expand_empty_file_found_by_a_glob(tmp_path):
    write(tmp_path / "a.txt", "x")
    write(tmp_path / "b.txt", "")
    with pytest.raises(DataError, match="b.txt is empty"):
        expand_sources([str(tmp_path / "*.txt")], "data.train")


def test_expand_missing_path(tmp_path):
    missing = tmp_path / "missing" / "a.txt"
    with pytest.raises(DataError, match="does not exist") as info:
        expand_sources([str(missing)], "data.train")
    assert str(missing) in str(info.value)


def test_expand_dir_without_supported_files(tmp_path):
    write(tmp_path / "d" / "notes.md", "x")
    with pytest.raises(DataError, match="holds no") as info:
        expand_sources([str(tmp_path / "d")], "data.train")
    assert str(tmp_path / "d") in str(info.value)


def test_expand_glob_without_a_match(tmp_path):
    write(tmp_path / "a.md", "x")
    pattern = str(tmp_path / "*.txt")
    with pytest.raises(DataError, match="matches no") as info:
        expand_sources([pattern, str(tmp_path / "*.md")], "data.train")
    assert pattern in str(info.value)


def test_expand_hub_names_are_returned_separately(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "a.txt", "x")
    files, hub = expand_sources(["imdb", str(path), "org/name"], "data.train")
    assert files == [path]
    assert hub == ["imdb", "org/name"]


# ----------------------------------------------------------------------------------------------
# check_text_file


def test_check_text_file_rejects_a_nul_byte(tmp_path):
    path = write(tmp_path / "bin.txt", b"hello world\n\x00\x01\x02")
    with pytest.raises(DataError) as info:
        check_text_file(path)
    assert "NUL" in str(info.value) and "offset 12" in str(info.value) and "bin.txt" in str(info.value)


def test_check_text_file_rejects_latin1_and_names_the_offset(tmp_path):
    path = write(tmp_path / "latin.txt", "Call me Ishmael.\nna\u00efve caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        check_text_file(path)
    assert "UTF-8" in str(info.value) and "latin.txt" in str(info.value)
    assert "offset 19" in str(info.value)  # the byte of "ï"


def test_check_text_file_latin1_at_the_end_names_the_offset(tmp_path):
    # the docstring promises the byte offset; a latin-1 file whose last byte is non-ASCII must get it too
    path = write(tmp_path / "latin.txt", "Ahab's caf\u00e9".encode("latin-1"))
    with pytest.raises(DataError) as info:
        check_text_file(path)
    assert "latin.txt" in str(info.value)
    assert "offset 10" in str(info.value)


def test_check_text_file_accepts_multibyte_characters_across_chunk_boundaries(tmp_path, monkeypatch):
    text = "h\u00e9llo w\u00f6rld \u2014 \u65e5\u672c\u8a9e \U0001f40b!\n" * 50
    path = write(tmp_path / "utf8.txt", text)
    for chunk in (1, 2, 3, 5, 7):
        monkeypatch.setattr(data, "_UTF8_CHUNK", chunk)
        check_text_file(path)  # must not raise


def test_check_text_file_accepts_a_character_split_by_the_default_chunk(tmp_path):
    chunk = data._UTF8_CHUNK
    path = write(tmp_path / "big.txt", b"a" * (chunk - 1) + "\U0001f40b tail\n".encode("utf-8"))
    check_text_file(path)


def test_check_text_file_offset_is_exact_when_a_bad_sequence_straddles_a_chunk(tmp_path, monkeypatch):
    # "abc" + latin-1 "é" + "xyz": the bad byte is at offset 3, whatever the chunk size
    path = write(tmp_path / "latin.txt", b"abc\xe9xyz.\n")
    monkeypatch.setattr(data, "_UTF8_CHUNK", 4)
    with pytest.raises(DataError) as info:
        check_text_file(path)
    assert "offset 3" in str(info.value)


def test_check_text_file_nul_offset_in_a_later_chunk(tmp_path, monkeypatch):
    path = write(tmp_path / "bin.txt", b"0123456789\x00")
    monkeypatch.setattr(data, "_UTF8_CHUNK", 4)
    with pytest.raises(DataError, match="offset 10"):
        check_text_file(path)


# ----------------------------------------------------------------------------------------------
# load_texts

TXT = "para one line a\npara one line b\n\npara two\n\n\n\npara three\n"


@pytest.mark.parametrize(("unit", "rows"), [("document", 1), ("paragraph", 3), ("line", 4)])
def test_load_txt_by_unit(tmp_path, cache, unit, rows):
    path = write(tmp_path / "a.txt", TXT)
    ds, files = load_texts([str(path)], "data.train", txt_unit=unit, cache_dir=cache)
    assert files == [path]
    assert ds.column_names == ["text"]
    assert len(ds) == rows
    assert all(t.strip() for t in ds["text"])
    if unit == "line":
        assert list(ds["text"]) == ["para one line a", "para one line b", "para two", "para three"]
    if unit == "paragraph":
        assert "para one line a" in ds["text"][0] and "para one line b" in ds["text"][0]


def test_load_txt_documents_one_per_file(tmp_path, cache):
    write(tmp_path / "d" / "a.txt", "first\n\nfile\n")
    write(tmp_path / "d" / "b.txt", "second file\n")
    ds, files = load_texts([str(tmp_path / "d")], "data.train", txt_unit="document", cache_dir=cache)
    assert len(ds) == 2 and len(files) == 2


def test_load_jsonl_with_a_text_column(tmp_path, cache):
    rows = [{"body": "hello whale", "id": 1}, {"body": "", "id": 2}, {"body": "  ", "id": 3}, {"body": None, "id": 4}, {"body": "sea", "id": 5}]
    path = write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    ds, _ = load_texts([str(path)], "data.train", text_column="body", cache_dir=cache)
    assert ds.column_names == ["text"]
    assert list(ds["text"]) == ["hello whale", "sea"]  # empty, blank and null texts dropped


def test_load_csv_with_a_text_column(tmp_path, cache):
    path = write(tmp_path / "a.csv", 'label,review\n1,"good, very good"\n0,bad\n1,""\n')
    ds, _ = load_texts([str(path)], "data.train", text_column="review", cache_dir=cache)
    assert list(ds["text"]) == ["good, very good", "bad"]


def test_load_tsv_splits_on_tabs(tmp_path, cache):
    path = write(tmp_path / "a.tsv", "text\tlabel\nhello, whale\t1\nsea, ship\t0\n")
    ds, _ = load_texts([str(path)], "data.train", cache_dir=cache)
    assert list(ds["text"]) == ["hello, whale", "sea, ship"]


def test_load_parquet_with_a_text_column(tmp_path, cache):
    path = tmp_path / "a.parquet"
    pd.DataFrame({"content": ["one", "two", "", "three"], "n": [1, 2, 3, 4]}).to_parquet(path)
    ds, _ = load_texts([str(path)], "data.train", text_column="content", cache_dir=cache)
    assert list(ds["text"]) == ["one", "two", "three"]


def test_load_non_string_column_becomes_text(tmp_path, cache):
    # _text_column converts other types with Dataset.map, but datasets keeps the int64 feature
    path = write(tmp_path / "a.jsonl", '{"text": 12}\n{"text": 3}\n')
    ds, _ = load_texts([str(path)], "data.train", cache_dir=cache)
    assert list(ds["text"]) == ["12", "3"]


def test_load_mixed_types_concatenates(tmp_path, cache):
    txt = write(tmp_path / "a.txt", "alpha\n\nbeta\n")
    jsonl = write(tmp_path / "b.jsonl", '{"text": "gamma"}\n')
    ds, files = load_texts([str(txt), str(jsonl)], "data.train", cache_dir=cache)
    assert sorted(t.strip() for t in ds["text"]) == ["alpha", "beta", "gamma"]
    assert files == [txt, jsonl]


def test_load_missing_column_names_the_columns(tmp_path, cache):
    path = write(tmp_path / "a.jsonl", '{"body": "x", "label": 1}\n')
    with pytest.raises(DataError) as info:
        load_texts([str(path)], "data.train", cache_dir=cache)
    message = str(info.value)
    assert "'text'" in message and "body" in message and "label" in message and "data.text_column" in message


def test_load_only_empty_texts_is_an_error(tmp_path, cache):
    path = write(tmp_path / "a.txt", "\n\n   \n\n")
    with pytest.raises(DataError, match="no text"):
        load_texts([str(path)], "data.train", txt_unit="line", cache_dir=cache)


def test_load_rejects_a_binary_txt(tmp_path, cache):
    path = write(tmp_path / "a.txt", b"ok\n\x00")
    with pytest.raises(DataError, match="NUL"):
        load_texts([str(path)], "data.train", cache_dir=cache)


def test_load_malformed_jsonl_names_the_file(tmp_path, cache):
    path = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError) as info:
        load_texts([str(path)], "data.train", cache_dir=cache)
    assert "bad.jsonl" in str(info.value) and "data.train" in str(info.value)


# ----------------------------------------------------------------------------------------------
# split_validation


def docs(n: int) -> Dataset:
    return Dataset.from_dict({"text": [f"document number {i}" for i in range(n)]})


def test_split_validation_sizes_and_disjoint():
    train, val = split_validation(docs(100), 0.1, seed=0)
    assert len(val) == 10 and len(train) == 90
    assert set(train["text"]).isdisjoint(val["text"])
    assert set(train["text"]) | set(val["text"]) == set(docs(100)["text"])


def test_split_validation_is_seeded():
    _, a = split_validation(docs(100), 0.1, seed=1)
    _, b = split_validation(docs(100), 0.1, seed=1)
    _, c = split_validation(docs(100), 0.1, seed=2)
    assert list(a["text"]) == list(b["text"])
    assert set(a["text"]) != set(c["text"])


def test_split_validation_holds_out_at_least_one():
    train, val = split_validation(docs(3), 0.01, seed=0)
    assert len(val) == 1 and len(train) == 2


def test_split_validation_single_document_is_an_error():
    with pytest.raises(DataError, match="single document") as info:
        split_validation(docs(1), 0.1, seed=0, key="data.train")
    assert "data.validation" in str(info.value)


# ----------------------------------------------------------------------------------------------
# pack_blocks


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_pack_blocks_full_blocks_cls_first_sep_between_docs(arch, bert_tok, roberta_tok):
    tok = bert_tok if arch == "bert" else roberta_tok
    texts = moby_paragraphs(2)
    block = 32
    blocks = pack_blocks(Dataset.from_dict({"text": texts}), tok, block)
    assert blocks.dtype == np.int32 and blocks.ndim == 2 and blocks.shape[1] == block
    cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
    assert (cls_id, sep_id) == ((2, 3) if arch == "bert" else (0, 2))
    assert (blocks[:, 0] == cls_id).all()
    body = blocks[:, 1:]
    assert not (body == cls_id).any()
    assert not (body == tok.pad_token_id).any()  # no padding
    # the bodies, in order, are the token stream: each document's ids followed by SEP
    stream = []
    for text in texts:
        stream.extend(tok(text, add_special_tokens=False)["input_ids"])
        stream.append(sep_id)
    assert len(blocks) == len(stream) // (block - 1)  # only the incomplete tail is dropped
    assert body.reshape(-1).tolist() == stream[: body.size]
    assert (body == sep_id).sum() == stream[: body.size].count(sep_id)


def test_pack_blocks_reads_whole_documents_with_a_tokenizer_saved_truncating(tmp_path, bert_tok):
    """A fast tokenizer saves the truncation of its last truncating call in tokenizer.json; loaded from
    a checkpoint (a resumed run, model.init_from), it must still pack every document whole."""
    from lmtune.tokenization import load_tokenizer

    texts = moby_paragraphs(2)
    whole = pack_blocks(Dataset.from_dict({"text": texts}), bert_tok, 32)
    bert_tok.save_pretrained(tmp_path / "first")
    used = load_tokenizer(str(tmp_path / "first"))
    used(texts, truncation=True, max_length=16)  # what fine-tuning and the pretraining probe do
    used.save_pretrained(tmp_path / "checkpoint")
    reloaded = load_tokenizer(str(tmp_path / "checkpoint"))
    assert reloaded.backend_tokenizer.truncation is not None  # the trap: it would cut each text at 16 tokens
    assert max(len(bert_tok(t, add_special_tokens=False)["input_ids"]) for t in texts) > 16
    np.testing.assert_array_equal(pack_blocks(Dataset.from_dict({"text": texts}), reloaded, 32), whole)
    assert reloaded.backend_tokenizer.truncation is not None  # the tokenizer itself is left as it was


def test_pack_blocks_too_little_text_gives_no_blocks(bert_tok):
    blocks = pack_blocks(Dataset.from_dict({"text": ["call me"]}), bert_tok, 64)
    assert blocks.shape == (0, 64) and blocks.dtype == np.int32


# ----------------------------------------------------------------------------------------------
# pack_blocks on cached datasets: written once to an .npy file and memory-mapped


def cached_texts(tmp_path: Path, n_chapters: int = 2):
    """A dataset backed by datasets cache files, as `load_texts` gives a run, and its cache dir."""
    corpus = write(tmp_path / "corpus.txt", "\n\n".join(moby_paragraphs(n_chapters)) + "\n")
    cache_dir = tmp_path / "hf-cache"
    dataset, _ = load_texts([str(corpus)], "data.train", cache_dir=str(cache_dir))
    assert dataset.cache_files
    return dataset, cache_dir


def blocks_files(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.rglob("*") if "lmtune-blocks-" in p.name)


def test_pack_blocks_of_a_cached_dataset_are_memory_mapped_and_reused(tmp_path, bert_tok):
    dataset, cache_dir = cached_texts(tmp_path)
    blocks = pack_blocks(dataset, bert_tok, 32)
    assert isinstance(blocks, np.memmap) and blocks.dtype == np.int32 and blocks.shape[1] == 32
    assert not blocks.flags.writeable
    in_memory = pack_blocks(Dataset.from_dict({"text": list(dataset["text"])}), bert_tok, 32)
    assert type(in_memory) is np.ndarray
    np.testing.assert_array_equal(blocks, in_memory)
    [written] = blocks_files(cache_dir)  # one complete file, no temporary left behind
    assert written.suffix == ".npy" and not written.name.startswith(".")
    stamp = written.stat().st_mtime_ns
    again = pack_blocks(dataset, bert_tok, 32)
    assert blocks_files(cache_dir) == [written] and written.stat().st_mtime_ns == stamp  # reused, not rewritten
    np.testing.assert_array_equal(again, in_memory)
    other = pack_blocks(dataset, bert_tok, 16)  # another block size is another file
    assert other.shape[1] == 16 and len(blocks_files(cache_dir)) == 2


def test_pack_blocks_never_takes_an_interrupted_write_as_the_result(tmp_path, bert_tok, monkeypatch):
    dataset, cache_dir = cached_texts(tmp_path)
    expected = pack_blocks(Dataset.from_dict({"text": list(dataset["text"])}), bert_tok, 32)
    monkeypatch.setattr(data, "_WRITE_BYTES", 4 * 32 * 10)  # ten blocks per chunk: several chunks
    real_rows = data._block_rows
    calls = {"n": 0}

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_rows(*args)

    monkeypatch.setattr(data, "_block_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pack_blocks(dataset, bert_tok, 32)
    assert blocks_files(cache_dir) == []  # neither a final file nor the temporary one
    monkeypatch.setattr(data, "_block_rows", real_rows)

    # a killed process cannot clean up: its temporary file stays, and is ignored
    pack_blocks(dataset, bert_tok, 32)
    [final] = blocks_files(cache_dir)
    final.unlink()
    with open(final.with_name(f".{final.name}.999-0badf00d.tmp"), "wb") as handle:
        np.save(handle, expected[:3])  # what an interrupted writer leaves: a shorter array
    blocks = pack_blocks(dataset, bert_tok, 32)
    np.testing.assert_array_equal(blocks, expected)
    assert final.is_file()

    # a final file that is not what this dataset packs to (damaged by hand) is written again
    np.save(final, expected[:3])
    np.testing.assert_array_equal(pack_blocks(dataset, bert_tok, 32), expected)


def test_pack_blocks_that_cannot_be_written_is_a_data_error(tmp_path, bert_tok, monkeypatch):
    dataset, _ = cached_texts(tmp_path)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", full)
    with pytest.raises(DataError, match="No space left on device"):
        pack_blocks(dataset, bert_tok, 32)


# ----------------------------------------------------------------------------------------------
# Long documents: tokenized in whitespace-aligned pieces, with the tokens of the whole


def long_document(n_chars: int = 300_000) -> str:
    """Fixture paragraphs, some of their spaces replaced by other whitespace (runs, tabs, no-break
    spaces, form feeds BERT deletes), joined by whitespace runs, up to `n_chars` characters."""
    paragraphs = [
        p.strip()
        for path in sorted((Path(__file__).parent / "fixtures" / "corpus").glob("*.txt"))
        for p in path.read_text(encoding="utf-8").split("\n\n")
        if p.strip()
    ]
    inner = ["  ", "\t", "\u00a0", "\u3000", "\x0c", " \x0c ", "\n", "   ", " \t ", "\r\n"]
    joints = ["\n\n", " ", "  ", "\n", "\t", " \n  ", "\u00a0", "\r\n", "\x0c", "   \t\n"]
    parts, size, i = [], 0, 0
    while size < n_chars:
        text = paragraphs[i % len(paragraphs)].replace(" ", inner[i % len(inner)], 1 + i % 7)
        parts += [text, joints[i % len(joints)]]
        size += len(text) + len(parts[-1])
        i += 1
    return "".join(parts)


@pytest.fixture(scope="module")
def whitespace_tokenizers() -> dict[str, Any]:
    """Tokenizers trained on text with whitespace runs, so they hold tokens such as "ĠĠ" and "ĊĊ"."""
    paragraphs = long_document(60_000).split("\n\n")
    return {arch: train_tokenizer(paragraphs, arch, vocab_size=500, max_length=64) for arch in ("bert", "roberta")}


def test_text_pieces_cut_before_a_whitespace_run_within_the_limit():
    text = long_document(20_000)
    for limit in (200, 997, 5000):
        pieces = data.text_pieces(text, limit)
        assert "".join(pieces) == text
        assert all(0 < len(p) <= limit for p in pieces)
        for before, after in zip(pieces, pieces[1:]):
            assert after[0] in " \t\n\r\u00a0\u3000" and not before[-1].isspace()
    assert data.text_pieces("short text", 100) == ["short text"]
    # no whitespace at all: cut at the limit anyway
    assert data.text_pieces("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]
    assert data.text_pieces("ab \x0c\x0cd", 4) == ["ab", " \x0c\x0cd"]  # never just before \f


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_a_long_document_packs_exactly_as_if_tokenized_whole(arch, monkeypatch, whitespace_tokenizers):
    tok = whitespace_tokenizers[arch]
    text = long_document()
    assert len(text) >= 300_000
    texts = {"text": ["A short first document.", text, " ".join(moby_paragraphs(1)[:4])]}
    monkeypatch.setattr(data, "LONG_TEXT_CHARS", 10**9)
    whole = pack_blocks(Dataset.from_dict(texts), tok, 32)
    for limit in (100_000, 2_000, 200):
        assert all(p[0].isspace() for p in data.text_pieces(text, limit)[1:])  # no cut inside a word
        monkeypatch.setattr(data, "LONG_TEXT_CHARS", limit)
        np.testing.assert_array_equal(pack_blocks(Dataset.from_dict(texts), tok, 32), whole, err_msg=f"limit {limit}")
    # the stream holds the whole document's tokens, ended by exactly one separator
    stream = whole[:, 1:].reshape(-1).tolist()
    first, ids, last = (tok(t, add_special_tokens=False)["input_ids"] for t in texts["text"])
    sep = tok.sep_token_id
    assert len(stream) > len(first) + len(ids) + 3
    assert stream[: len(first) + len(ids) + 3] == [*first, sep, *ids, sep, last[0]]


def test_a_tokenizer_whose_pre_tokenizer_is_not_known_to_split_exactly_is_tokenized_whole(bert_tok, roberta_tok, monkeypatch):
    from tokenizers import pre_tokenizers

    assert data.splits_exactly_at_whitespace(bert_tok.backend_tokenizer)
    assert data.splits_exactly_at_whitespace(roberta_tok.backend_tokenizer)
    other = copy.deepcopy(bert_tok)
    other.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    assert not data.splits_exactly_at_whitespace(other.backend_tokenizer)
    monkeypatch.setattr(data, "LONG_TEXT_CHARS", 50)
    monkeypatch.setattr(data, "text_pieces", lambda *a, **k: pytest.fail("a Metaspace tokenizer's text was cut"))
    pack_blocks(Dataset.from_dict({"text": ["call me ishmael " * 20]}), other, 16)


# ----------------------------------------------------------------------------------------------
# Masker

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
VOCAB = 1000


def make_batch(rows: int = 64, length: int = 128, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIALS), vocab, (rows, length), generator=g)
    ids[:, 0] = CLS
    ids[:, 40] = SEP
    ids[::4, 100:] = PAD  # some rows end in padding
    ids[1::8, 10] = UNK
    return ids


def masker(**kwargs) -> Masker:
    return Masker(mask_id=MASK, special_ids=SPECIALS, real_vocab=kwargs.pop("real_vocab", VOCAB), **kwargs)


def test_masked_fraction_is_close_to_the_probability():
    ids = make_batch()
    special = torch.isin(ids, torch.tensor(SPECIALS))
    for p in (0.15, 0.4):
        _, labels = masker(probability=p)(ids, torch.Generator().manual_seed(1))
        selected = labels != -100
        fraction = selected.sum().item() / (~special).sum().item()
        assert abs(fraction - p) < 0.02, (p, fraction)


def test_selected_tokens_split_80_10_10():
    ids = make_batch()
    out, labels = masker()(ids, torch.Generator().manual_seed(2))
    selected = labels != -100
    n = selected.sum().item()
    masked = (selected & (out == MASK)).sum().item() / n
    kept = (selected & (out == ids)).sum().item() / n
    randomised = (selected & (out != ids) & (out != MASK)).sum().item() / n
    assert abs(masked - 0.8) < 0.04, masked
    assert abs(randomised - 0.1) < 0.03, randomised
    assert abs(kept - 0.1) < 0.03, kept


def test_custom_replace_shares():
    ids = make_batch()
    out, labels = masker(mask_replace=0.5, random_replace=0.5)(ids, torch.Generator().manual_seed(3))
    selected = labels != -100
    n = selected.sum().item()
    assert abs((selected & (out == MASK)).sum().item() / n - 0.5) < 0.05
    assert (selected & (out == ids)).sum().item() / n < 0.01  # only chance coincidences


def test_special_tokens_are_never_selected_or_changed():
    ids = make_batch()
    special = torch.isin(ids, torch.tensor(SPECIALS))
    out, labels = masker(probability=0.9)(ids, torch.Generator().manual_seed(4))
    assert (labels[special] == -100).all()
    assert torch.equal(out[special], ids[special])


def test_labels_are_the_original_ids_exactly_where_selected():
    ids = make_batch()
    out, labels = masker()(ids, torch.Generator().manual_seed(5))
    selected = labels != -100
    assert torch.equal(labels[selected], ids[selected])
    assert (labels[~selected] == -100).all()
    assert torch.equal(out[~selected], ids[~selected])  # nothing outside the selection changes
    assert ids.dtype == out.dtype == labels.dtype and out.shape == labels.shape == ids.shape


def test_input_is_not_modified():
    ids = make_batch()
    before = ids.clone()
    masker()(ids, torch.Generator().manual_seed(6))
    assert torch.equal(ids, before)


def test_random_replacements_are_never_special_tokens():
    # a tiny real vocabulary makes a special id a likely random draw
    real_vocab = 10
    ids = make_batch(vocab=real_vocab)
    out, labels = masker(real_vocab=real_vocab, probability=0.5, mask_replace=0.0, random_replace=1.0)(
        ids, torch.Generator().manual_seed(7)
    )
    selected = labels != -100
    assert selected.sum() > 1000
    assert not torch.isin(out[selected], torch.tensor(SPECIALS)).any()
    assert (out[selected] < real_vocab).all()
    assert (out[selected] != ids[selected]).float().mean() > 0.3  # they are really replaced (expected 0.4)


def test_at_least_one_token_is_selected():
    ids = make_batch(rows=2)
    _, labels = masker(probability=1e-9)(ids, torch.Generator().manual_seed(8))
    assert (labels != -100).sum() == 1


def test_same_generator_seed_same_masks():
    ids = make_batch()
    m = masker()
    a = m(ids, torch.Generator().manual_seed(9))
    b = m(ids, torch.Generator().manual_seed(9))
    c = m(ids, torch.Generator().manual_seed(10))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_batch_generator_is_a_function_of_seed_and_position():
    draw = lambda *args: torch.rand(4, generator=batch_generator(*args))  # noqa: E731
    assert torch.equal(draw(0, 1, 2), draw(0, 1, 2))
    assert not torch.equal(draw(0, 1, 2), draw(0, 2, 1))
    assert not torch.equal(draw(0, 1, 2), draw(1, 1, 2))


# whole-word masking: ids 5..99 start a word, 100..199 continue one
WORD_START, CONT_START, WW_VOCAB = 5, 100, 200


def word_batch(rows: int = 64, length: int = 128, seed: int = 0) -> tuple[torch.Tensor, list[list[tuple[int, int]]]]:
    """Rows of [CLS] followed by words of 1-4 pieces; returns the ids and each row's (start, end) spans."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((rows, length), PAD)
    spans: list[list[tuple[int, int]]] = []
    for r in range(rows):
        ids[r, 0] = CLS
        pos, row_spans = 1, []
        while pos < length:
            n = int(torch.randint(1, 5, (1,), generator=g))
            end = min(pos + n, length)
            ids[r, pos] = int(torch.randint(WORD_START, CONT_START, (1,), generator=g))
            if end > pos + 1:
                ids[r, pos + 1 : end] = torch.randint(CONT_START, WW_VOCAB, (end - pos - 1,), generator=g)
            row_spans.append((pos, end))
            pos = end
        spans.append(row_spans)
    return ids, spans


def whole_word_masker(**kwargs) -> Masker:
    table = torch.zeros(WW_VOCAB, dtype=torch.bool)
    table[CONT_START:] = True
    return Masker(mask_id=MASK, special_ids=SPECIALS, real_vocab=WW_VOCAB, continuation=table, **kwargs)


def test_whole_word_masking_selects_every_piece_of_a_word_together():
    ids, spans = word_batch()
    _, labels = whole_word_masker()(ids, torch.Generator().manual_seed(11))
    selected = labels != -100
    assert not selected[:, 0].any()
    chosen_words = total_words = 0
    multi_piece_chosen = 0
    for r, row_spans in enumerate(spans):
        for start, end in row_spans:
            word = selected[r, start:end]
            assert word.all() or not word.any(), (r, start, end, word)
            total_words += 1
            if word.all():
                chosen_words += 1
                multi_piece_chosen += end - start > 1
    assert abs(chosen_words / total_words - 0.15) < 0.03
    assert multi_piece_chosen > 50  # the property was really exercised


def test_whole_word_masking_with_a_numpy_built_table_and_seeded():
    ids, _ = word_batch(rows=8, length=64, seed=1)
    table = np.zeros(WW_VOCAB, dtype=bool)
    table[CONT_START:] = True
    m = Masker(mask_id=MASK, special_ids=SPECIALS, real_vocab=WW_VOCAB, continuation=torch.from_numpy(table))
    a = m(ids, torch.Generator().manual_seed(12))
    b = m(ids, torch.Generator().manual_seed(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[1], whole_word_masker()(ids, torch.Generator().manual_seed(12))[1])


# ----------------------------------------------------------------------------------------------
# block_batches


def numbered_blocks(n: int = 23, length: int = 16) -> torch.Tensor:
    """Block i holds the id 10 + i everywhere but [CLS] in front, so a batch row names its block."""
    blocks = (torch.arange(n) + 10).unsqueeze(1).repeat(1, length).to(torch.int32)
    blocks[:, 0] = CLS
    return blocks


def block_order(batches) -> list[int]:
    order = []
    for batch in batches:
        original = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
        order.extend((original[:, 1] - 10).tolist())
    return order


def test_block_batches_order_is_a_seeded_permutation_and_drops_the_last():
    blocks = numbered_blocks()
    m = masker(real_vocab=100)
    batches = list(block_batches(blocks, 4, seed=0, epoch=0, masker=m))
    assert len(batches) == 23 // 4
    assert all(b["input_ids"].shape == (4, 16) and b["labels"].shape == (4, 16) for b in batches)
    assert all(b["input_ids"].dtype == torch.long for b in batches)
    order = block_order(batches)
    assert len(order) == len(set(order)) == 20 and set(order) <= set(range(23))
    assert order != sorted(order)
    assert block_order(block_batches(blocks, 4, seed=0, epoch=0, masker=m)) == order
    assert block_order(block_batches(blocks, 4, seed=0, epoch=1, masker=m)) != order
    assert block_order(block_batches(blocks, 4, seed=1, epoch=0, masker=m)) != order


def test_block_batches_without_shuffle_keep_order_and_the_tail():
    blocks = numbered_blocks()
    batches = list(block_batches(blocks, 4, seed=0, epoch=0, masker=masker(real_vocab=100), shuffle=False))
    assert [len(b["input_ids"]) for b in batches] == [4, 4, 4, 4, 4, 3]
    assert block_order(batches) == list(range(23))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("start", [0, 1, 3, 5])
def test_block_batches_start_yields_exactly_the_tail(shuffle, start):
    blocks = numbered_blocks()
    m = masker(real_vocab=100)
    full = list(block_batches(blocks, 4, seed=3, epoch=2, masker=m, shuffle=shuffle))
    tail = list(block_batches(blocks, 4, seed=3, epoch=2, masker=m, start=start, shuffle=shuffle))
    assert len(tail) == len(full) - start
    for a, b in zip(full[start:], tail):
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["labels"], b["labels"])


@pytest.mark.parametrize("shuffle", [True, False])
def test_block_batches_are_the_same_from_an_array_a_memmap_and_a_tensor(tmp_path, shuffle):
    tensor = numbered_blocks()
    array = tensor.numpy().copy()
    np.save(tmp_path / "blocks.npy", array)
    mapped = np.load(tmp_path / "blocks.npy", mmap_mode="r")
    m = masker(real_vocab=100, probability=0.3)
    for start in (0, 2):
        streams = [list(block_batches(b, 4, seed=5, epoch=1, masker=m, start=start, shuffle=shuffle)) for b in (tensor, array, mapped)]
        assert len({len(s) for s in streams}) == 1 and streams[0]
        for batches in zip(*streams):
            for key in ("input_ids", "labels"):
                assert all(b[key].dtype == torch.long for b in batches)
                assert torch.equal(batches[0][key], batches[1][key]) and torch.equal(batches[0][key], batches[2][key])
    assert not mapped.flags.writeable  # masking never wrote into the blocks


def test_block_batches_masks_depend_on_the_position():
    m = masker(real_vocab=100, probability=0.5)
    # the same content in two batches still gets different masks
    same = numbered_blocks(n=4).repeat(2, 1)
    c, d = list(block_batches(same, 4, seed=0, epoch=0, masker=m, shuffle=False))
    assert not torch.equal(c["labels"] != -100, d["labels"] != -100)


# ----------------------------------------------------------------------------------------------
# add_repeats


def test_repeated_entry_trains_times_over_but_held_out_documents_never(tmp_path, cache):
    from lmtune.stages.pretrain import load_corpus
    from lmtune.config import load_config

    book = write(tmp_path / "book.txt", "\n".join(f"a line of the book number {i}" for i in range(200)))
    task = write(tmp_path / "task.jsonl", "".join(json.dumps({"text": f"task text {i}"}) + "\n" for i in range(50)))
    cfg_path = write(tmp_path / "c.yaml", json.dumps({
        "output_dir": str(tmp_path / "run"), "train": {"max_steps": 1},
        "data": {"train": [str(book), str(task)], "txt_unit": "line", "validation_fraction": 0.2,
                 "cache_dir": str(cache), "repeat": {str(task): 3}},
    }))
    train, val = load_corpus(load_config(cfg_path, stage="pretrain"))[:2]
    counts = pd.Series(list(train["text"])).value_counts()
    held = set(val["text"])
    task_texts = {f"task text {i}" for i in range(50)}
    assert len(held) == 50 and held & task_texts  # some task texts are held out, so the check below can fail
    for text in task_texts:
        assert counts.get(text, 0) == (0 if text in held else 3), text
    book_counts = [counts[t] for t in counts.index if t not in task_texts]
    assert set(book_counts) == {1} and len(book_counts) == 200 - len(held - task_texts)


# ----------------------------------------------------------------------------------------------
# encode_rows with windows, and per_text


def test_windows_cover_a_long_text_in_order_and_cap_at_max_windows(bert_tok):
    from lmtune.data import encode_rows

    long_text, short_text = " ".join(moby_paragraphs(3))[:3000], "call me ishmael"
    whole = bert_tok(long_text, add_special_tokens=False)["input_ids"]
    assert len(whole) > 3 * 14  # the long text needs more than 3 windows of 14 tokens
    enc = encode_rows(bert_tok, [short_text, long_text], None, 16, np.array([0, 1]), max_windows=3)
    assert enc.n_texts == 2 and enc.owners.tolist() == [0, 1, 1, 1]
    assert enc.targets.tolist() == [0, 1, 1, 1]
    assert all(len(ids) <= 16 for ids in enc.input_ids)
    cls, sep = bert_tok.cls_token_id, bert_tok.sep_token_id
    assert all(ids[0] == cls and ids[-1] == sep for ids in enc.input_ids)
    # the windows are consecutive, non-overlapping pieces of the text, from its start
    assert np.concatenate([ids[1:-1] for ids in enc.input_ids[1:]]).tolist() == whole[: 3 * 14]
    # one window a text is plain truncation
    one = encode_rows(bert_tok, [short_text, long_text], None, 16, max_windows=1)
    assert one.owners is None and [ids.tolist() for ids in one.input_ids] == [enc.input_ids[0].tolist(), enc.input_ids[1].tolist()]


def test_per_text_is_the_token_weighted_mean_of_a_texts_windows():
    from lmtune.data import Encoded, per_text

    ids = [np.zeros(n, dtype=np.int64) for n in (4, 10, 10, 5)]
    enc = Encoded(ids, None, None, owners=np.array([0, 1, 1, 1]), n_texts=2)
    outputs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [1.0, 0.0]], dtype=np.float32)
    got = per_text(enc, outputs)
    assert got.shape == (2, 2) and got.dtype == np.float32
    assert got[0].tolist() == pytest.approx([0.9, 0.1])
    assert got[1].tolist() == pytest.approx([(2 + 4 + 5) / 25, (8 + 6) / 25])
    values = per_text(enc, np.array([1.0, 2.0, 4.0, 3.0]))  # regression outputs: one value a row
    assert values.tolist() == pytest.approx([1.0, (20 + 40 + 15) / 25])
