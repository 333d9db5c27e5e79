"""Read text files into `datasets.Dataset`s, tokenize them (batched, cached) and pack them for MLM.

Pipeline: config entries (files, dirs, globs) -> checked file list -> `datasets.load_dataset` with the
packaged builders (memory-mapped Arrow, cached by the library) -> one `text` column -> tokenized with
`Dataset.map` (cached: a second run with the same files and tokenizer skips it; a very long text in
whitespace-aligned pieces) -> packed into full blocks of `max_length` tokens, `[CLS]` first and `[SEP]`
between documents, no padding -> written once to an int32 `.npy` file beside the cache and
memory-mapped, so the corpus never has to fit in memory.

Masking happens per batch in `mask_tokens`, seeded by the batch's position, so a run's masks are a
pure function of (seed, step): nothing to save for resuming.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmtune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# file suffix -> the datasets builder that reads it
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
_UTF8_CHUNK = 1 << 20
# a text longer than this many characters is tokenized in whitespace-aligned pieces (`text_pieces`)
LONG_TEXT_CHARS = 100_000
_PIECES_PER_CALL = 16  # pieces of one long text encoded per tokenizer call
_WRITE_BYTES = 64 << 20  # packed blocks converted and written to the .npy file at a time
# Unicode White_Space: what the tokenizers' pre-tokenizers and their regexes (\s) call whitespace
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# where a long text may be cut: the same less \v, \f and U+0085, which BERT's normalizer deletes
_CUTTABLE = "\t\n\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_CUT = re.compile(f"(?s).*[^{_WHITESPACE}]([{_CUTTABLE}])")  # group 1: the last cuttable start of a run


# ----------------------------------------------------------------------------------------------
# Finding and checking files


def _is_hub_name(entry: str) -> bool:
    from lmtune.config import looks_local

    return not looks_local(entry)


def expand_sources(entries: list[str], key: str) -> tuple[list[Path], list[str]]:
    """Turn config entries into a sorted, de-duplicated file list plus any hub dataset names.

    Raises:
        DataError: for a missing path, a glob or directory with no supported file, an unsupported
            suffix or an empty file; the message names the config key and the entry.
    """
    files: list[Path] = []
    hub: list[str] = []
    suffixes = " ".join(BUILDERS)
    for entry in entries:
        if glob.has_magic(entry):
            matches = sorted(Path(p) for p in glob.glob(entry, recursive=True))
            found = [p for p in matches if p.is_file() and p.suffix.lower() in BUILDERS]
            if not found:
                raise DataError(f"{key}: the glob {entry!r} matches no {suffixes} file")
            files.extend(found)
        elif os.path.isdir(entry):
            found = sorted(
                p for p in Path(entry).rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS and not p.name.startswith(".")
            )
            if not found:
                raise DataError(f"{key}: the directory {entry} holds no {suffixes} file")
            files.extend(found)
        elif os.path.isfile(entry):
            path = Path(entry)
            if path.suffix.lower() not in BUILDERS:
                raise DataError(f"{key}: {entry} has an unsupported type {path.suffix!r}: use one of {suffixes}")
            files.append(path)
        elif _is_hub_name(entry):
            hub.append(entry)
        else:
            raise DataError(f"{key}: {entry} does not exist (relative paths resolve against the working directory)")
    unique = list(dict.fromkeys(files))
    for path in unique:
        if path.stat().st_size == 0:
            raise DataError(f"{key}: {path} is empty")
    return unique, hub


def check_text_file(path: Path) -> None:
    """Fail early, naming the file and byte offset, on binary or non-UTF-8 content."""
    offset = 0  # bytes of the file read before the current chunk
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    with open(path, "rb") as handle:
        while chunk := handle.read(_UTF8_CHUNK):
            if b"\x00" in chunk:
                where = offset + chunk.index(b"\x00")
                raise DataError(f"{path} looks binary (a NUL byte at offset {where}): give text files only")
            pending = len(decoder.getstate()[0])  # bytes of an unfinished character held from the last chunk
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path} is not UTF-8 text (undecodable byte at offset {offset - pending + exc.start}): "
                    "convert it, e.g. `iconv -f latin1 -t utf-8`"
                ) from None
            offset += len(chunk)
    pending = len(decoder.getstate()[0])
    if pending:
        raise DataError(
            f"{path} is not UTF-8 text (undecodable byte at offset {offset - pending}, an unfinished character at the end): "
            "convert it, e.g. `iconv -f latin1 -t utf-8`"
        )


def fingerprint(files: list[Path]) -> str:
    """A sha256 over the files' names and contents: which data a run saw, for the manifest."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(_UTF8_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Loading with datasets


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """False when offline mode is set or the hub does not answer within `timeout` seconds."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(name: str, key: str, cache_dir: str | None):
    import datasets

    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or not hub_reachable():
        raise DataError(
            f"{key}: {name!r} is not a local file, directory or glob, and the Hugging Face hub is not reachable "
            "to load it as a dataset: check the path, or download the data and point the config at the files"
        )
    try:
        return datasets.load_dataset(name, split="train", cache_dir=cache_dir)
    except Exception as exc:  # the hub raises many types; all mean "cannot use this name"
        raise DataError(f"{key}: loading the hub dataset {name!r} failed: {exc}") from None


def _read_files(files: list[Path], key: str, txt_unit: str, cache_dir: str | None) -> list[tuple[Any, list[Path]]]:
    """Read files with the datasets builder of their type; one dataset per (builder, suffix) group."""
    import datasets

    by_builder: dict[tuple[str, str], list[Path]] = {}
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".txt":
            check_text_file(path)
        by_builder.setdefault((BUILDERS[suffix], suffix), []).append(path)
    parts = []
    for (builder, suffix), paths in by_builder.items():
        kwargs: dict[str, Any] = {"sample_by": txt_unit} if builder == "text" else {}
        if suffix == ".tsv":
            kwargs["delimiter"] = "\t"
        try:
            ds = datasets.load_dataset(
                builder, data_files=[str(p) for p in paths], split="train", cache_dir=cache_dir, **kwargs
            )
        except Exception as exc:  # pyarrow/pandas/json parse errors: name the file and, where we can, the line
            raise DataError(f"{key}: {_read_failure(paths, exc)}") from None
        parts.append((ds, paths))
    return parts


def _read_failure(paths: list[Path], exc: Exception) -> str:
    """The most specific description of why a group of files could not be read."""
    for path in paths:
        if path.suffix.lower() == ".jsonl":
            with open(path, encoding="utf-8", errors="replace") as handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        json.loads(line)
                    except json.JSONDecodeError as err:
                        return f"{path} line {number} is not valid JSON ({err.msg}): fix or remove that line"
    deepest: BaseException = exc
    while deepest.__cause__ is not None or deepest.__context__ is not None:
        deepest = deepest.__cause__ or deepest.__context__  # type: ignore[assignment]
    message = str(deepest).strip().splitlines()[-1] if str(deepest).strip() else type(deepest).__name__
    names = ", ".join(str(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
    return f"could not read {names}: {message}"


def load_texts(
    entries: list[str],
    key: str,
    text_column: str = "text",
    txt_unit: str = "paragraph",
    cache_dir: str | None = None,
):
    """Load every entry into one `datasets.Dataset` with a single non-empty `text` column.

    Args:
        entries: files, directories, globs (or hub names, when online).
        key: the config key the entries came from, for messages (e.g. "data.train").
        text_column: the column to read from .jsonl/.json/.csv/.tsv/.parquet files.
        txt_unit: how .txt files split into documents: "document", "paragraph" or "line".
        cache_dir: the datasets cache (None: the library default).

    Returns:
        (dataset, files): the dataset and the local files it came from.
    """
    import datasets

    files, hub = expand_sources(entries, key)
    parts = [
        _text_column(ds, "text" if paths[0].suffix.lower() == ".txt" else text_column, key, paths)
        for ds, paths in _read_files(files, key, txt_unit, cache_dir)
    ]
    for name in hub:
        parts.append(_text_column(_load_hub(name, key, cache_dir), text_column, key, [Path(name)]))
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    dataset = dataset.filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True, desc="Dropping empty texts")
    if len(dataset) == 0:
        raise DataError(f"{key}: the files hold no text ({', '.join(map(str, files[:3]))})")
    return dataset, files


def load_table(entries: list[str], key: str, columns: list[str], cache_dir: str | None = None):
    """Load labelled rows (.jsonl .json .csv .tsv .parquet) keeping exactly `columns`.

    Raises:
        DataError: for .txt files (they have no label column), a missing column (naming the columns
            that exist), or no rows.
    """
    import datasets

    files, hub = expand_sources(entries, key)
    texts = [p for p in files if p.suffix.lower() == ".txt"]
    if texts:
        raise DataError(f"{key}: {texts[0]} is plain text, which has no label column: use .jsonl, .csv, .tsv or .parquet")
    parts = [(ds, paths) for ds, paths in _read_files(files, key, "document", cache_dir)]
    parts += [(_load_hub(name, key, cache_dir), [Path(name)]) for name in hub]
    selected = []
    for ds, paths in parts:
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise DataError(
                f"{key}: {paths[0]} has no column {', '.join(map(repr, missing))}; its columns are "
                f"{', '.join(ds.column_names)}: set data.text_column / data.label_column / data.text_pair_column"
            )
        selected.append(ds.select_columns(columns))
    try:
        dataset = selected[0] if len(selected) == 1 else datasets.concatenate_datasets(selected)
    except ValueError as exc:
        raise DataError(f"{key}: the files disagree on column types ({exc})") from None
    if len(dataset) == 0:
        raise DataError(f"{key}: the files hold no rows ({', '.join(map(str, files[:3]))})")
    return dataset, files


def _text_column(ds, column: str, key: str, paths: list[Path]):
    if column not in ds.column_names:
        raise DataError(
            f"{key}: {paths[0]} has no column {column!r}; its columns are {', '.join(ds.column_names)}: "
            "set data.text_column"
        )
    ds = ds.select_columns([column])
    if column != "text":
        ds = ds.rename_column(column, "text")
    feature = ds.features["text"]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        import datasets

        try:
            ds = ds.cast_column("text", datasets.Value("string"))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{key}: column {column!r} of {paths[0]} is not text ({feature}): {exc}") from None
    return ds


def split_validation(dataset, fraction: float, seed: int, key: str = "data.train"):
    """Hold out a seeded fraction of documents (at least one) for validation."""
    if len(dataset) < 2:
        raise DataError(
            f"{key} holds a single document, so none can be held out for validation: "
            "give data.validation files, or use data.txt_unit: paragraph or line"
        )
    n_val = max(1, round(len(dataset) * fraction))
    parts = dataset.train_test_split(test_size=n_val, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def add_repeats(train_ds, repeat: dict[str, int], held_out, text_column: str, txt_unit: str, cache_dir: str | None):
    """`train_ds` with the documents of each `repeat` entry appearing `times` times in all.

    The extra copies are the entry's documents less any text in `held_out` (the validation split), so
    no copy of a held-out document trains. Entries with times 1 add nothing.
    """
    import datasets

    extra = [(entry, times) for entry, times in repeat.items() if times > 1]
    if not extra:
        return train_ds
    held = set(held_out["text"])
    parts = [train_ds]
    for entry, times in extra:
        docs, _ = load_texts([entry], f"data.repeat[{entry!r}]", text_column, txt_unit, cache_dir)
        docs = docs.filter(lambda b: [t not in held for t in b["text"]], batched=True, desc=f"Repeating {entry}")
        parts.extend([docs] * (times - 1))
        log.info("data: %s repeated %d times (%d more training texts)", entry, times, (times - 1) * len(docs))
    return datasets.concatenate_datasets(parts)


# ----------------------------------------------------------------------------------------------
# Tokenizing and packing


def text_pieces(text: str, limit: int) -> list[str]:
    """Cut `text` into pieces of at most `limit` characters that tokenize like the whole.

    Each cut falls just before a whitespace character that follows a non-whitespace one (the start
    of a whitespace run), and that whitespace opens the next piece. Both lmtune tokenizers then give
    the same tokens for the pieces, concatenated, as for the whole text: BERT's pre-tokenizer splits
    at every whitespace character, and byte-level BPE (RoBERTa) keeps a space with the word after it
    ("Ġword") and groups a whitespace run only up to its last character, so nothing spans a cut
    made at the start of a run. The characters BERT's normalizer deletes rather than reads as
    whitespace (\\v, \\f, U+0085) are never cut at. A stretch of `limit` characters with no such
    place is cut at `limit` anyway: a word longer than that (or a long run of whitespace) is then
    split in two, which changes the tokens at that one place only.
    """
    if len(text) <= limit:
        return [text]
    pieces = []
    start = 0
    while len(text) - start > limit:
        # the last place in (start, start + limit] where a whitespace run starts
        found = _CUT.match(text, start, start + limit + 1)
        cut = found.start(1) if found else start + limit
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def splits_exactly_at_whitespace(backend: Any) -> bool:
    """True for the pre-tokenizers lmtune trains (BERT's, and byte-level BPE without a prefix space),
    for which tokenizing whitespace-aligned pieces gives exactly the tokens of the whole text. Others
    (regex splits that join punctuation with the newlines after it, a prefix space, Metaspace) may
    not, so their long texts are tokenized whole."""
    spec = json.loads(backend.to_str()).get("pre_tokenizer") or {}
    if spec.get("type") == "BertPreTokenizer":
        return True
    return spec.get("type") == "ByteLevel" and not spec.get("add_prefix_space", True)


def whole_text_encoder(tokenizer) -> Any:
    """A copy of the tokenizer's Rust backend that never truncates or pads. A fast tokenizer keeps the
    truncation of its last `tokenizer(..., truncation=True)` call in its backend, and saves it in
    tokenizer.json: loaded from a checkpoint (a resumed run, model.init_from, tokenizer.path), its
    backend would cut every document at the first max_length tokens."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def pack_blocks(dataset, tokenizer, block_size: int, num_proc: int | None = None, desc: str = "train") -> np.ndarray:
    """Tokenize every text and pack the token stream into blocks of `block_size` ids.

    Each block is `[CLS]` followed by `block_size - 1` tokens of the stream, in which every document
    ends with `[SEP]` (RoBERTa: `<s>` and `</s>`). The incomplete tail of each map batch is dropped.
    A text longer than `LONG_TEXT_CHARS` characters is tokenized in whitespace-aligned pieces
    (`text_pieces`), whose ids are concatenated: the same tokens as the whole text, at a fraction of
    the time and memory.

    Returns:
        An int32 array of shape (n_blocks, block_size). For a dataset backed by cache files (anything
        `load_texts` returns), the blocks are written once to an `.npy` file beside the datasets
        cache, named by the packed dataset's fingerprint, and returned memory-mapped read-only, so
        a corpus larger than RAM can be trained on; a later run (or another process of this run)
        reuses the file. An in-memory dataset gives an in-memory array.

    Raises:
        DataError: when the blocks cannot be written to the cache directory (disk full, read-only).
    """
    import pyarrow as pa

    backend = whole_text_encoder(tokenizer)
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    body = block_size - 1
    # pieces are only exact for a pre-tokenizer known to split at whitespace before its model runs
    limit = LONG_TEXT_CHARS if splits_exactly_at_whitespace(backend) else None
    per_call = _PIECES_PER_CALL

    def encode(texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int32) for e in backend.encode_batch(texts, add_special_tokens=False)]

    def tokenize(batch: dict[str, list[str]]) -> dict[str, list[np.ndarray]]:
        texts = batch["text"]
        if limit is None or all(len(t) <= limit for t in texts):
            return {"ids": encode(texts)}
        short = [i for i, t in enumerate(texts) if len(t) <= limit]
        ids: list[Any] = [None] * len(texts)
        for i, doc in zip(short, encode([texts[i] for i in short])):
            ids[i] = doc
        for i, text in enumerate(texts):
            if ids[i] is None:
                pieces = text_pieces(text, limit)
                # a few pieces per call: the tokenizer's per-token bookkeeping stays small
                parts = [part for g in range(0, len(pieces), per_call) for part in encode(pieces[g : g + per_call])]
                ids[i] = np.concatenate(parts)
        return {"ids": ids}

    def pack(batch: pa.Table) -> dict[str, np.ndarray]:
        docs = batch.column("ids").combine_chunks()
        tokens = _int32_values(docs)
        ends = np.cumsum(docs.value_lengths().to_numpy(zero_copy_only=False))
        stream = np.insert(tokens, ends, np.int32(sep_id))  # each document's ids, then SEP
        n = len(stream) // body
        blocks = np.empty((n, block_size), dtype=np.int32)
        blocks[:, 0] = cls_id
        blocks[:, 1:] = stream[: n * body].reshape(n, body)
        return {"input_ids": blocks}

    # the tokenizers library already encodes a batch on every core, so extra processes only pay
    # off when asked for explicitly (data.num_proc)
    workers = num_proc if num_proc and num_proc > 1 else None
    tokenized = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, num_proc=workers, desc=f"Tokenizing {desc}")
    packed = tokenized.with_format("arrow").map(
        pack, batched=True, batch_size=2000, remove_columns=["ids"], num_proc=workers, desc=f"Packing {desc}"
    )
    if len(packed) == 0:
        return np.zeros((0, block_size), dtype=np.int32)
    if not packed.cache_files:
        return _block_rows(packed, 0, len(packed), block_size)
    path = Path(packed.cache_files[0]["filename"]).parent / f"lmtune-blocks-{packed._fingerprint}.npy"
    blocks = _load_blocks(path, (len(packed), block_size))
    if blocks is None:
        _write_blocks(packed, path, block_size)
        blocks = _load_blocks(path, (len(packed), block_size))
        if blocks is None:
            raise DataError(f"{path}: the packed blocks just written do not read back: check the disk, or set data.cache_dir")
    log.debug("packed blocks: %s (%d x %d, memory-mapped)", path, *blocks.shape)
    return blocks


def _int32_values(lists: Any) -> np.ndarray:
    """The values of an Arrow list array, concatenated, as int32."""
    return lists.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)


def _block_rows(packed, start: int, stop: int, block_size: int) -> np.ndarray:
    """Rows [start, stop) of a packed dataset as an int32 array (n, block_size)."""
    column = packed.with_format("arrow")[start:stop].column("input_ids").combine_chunks()
    return _int32_values(column).reshape(-1, block_size)


def _load_blocks(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The complete blocks file at `path` memory-mapped read-only; None when missing or not as expected."""
    try:
        blocks = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):  # missing, or damaged by something other than lmtune
        return None
    if blocks.shape != shape or blocks.dtype != np.int32:
        return None
    return blocks


def _write_blocks(packed, path: Path, block_size: int) -> None:
    """Write the packed blocks to `path` chunk by chunk, under a temporary name moved into place at
    the end: a reader (a later run, another process) sees a complete file or none."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        log.warning(
            "%s is a partial blocks file, left by an interrupted run (unless another run is writing it now): "
            "delete it to free the disk",
            stale,
        )
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    rows = max(1, _WRITE_BYTES // (4 * block_size))
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int32, shape=(len(packed), block_size))
        for start in range(0, len(packed), rows):
            stop = min(start + rows, len(packed))
            out[start:stop] = _block_rows(packed, start, stop, block_size)
        out.flush()
        del out
        os.replace(tmp, path)
    except OSError as exc:
        raise DataError(
            f"could not write the packed blocks to {path}: {exc.strerror or exc}: free disk space there, or set "
            "data.cache_dir to a writable directory with room"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Masking


@dataclass(frozen=True)
class Masker:
    """Dynamic masking for MLM: select `probability` of the non-special tokens, then replace
    `mask_replace` of those by the mask token and `random_replace` by a random real token."""

    mask_id: int
    special_ids: tuple[int, ...]
    real_vocab: int  # ids below this are real tokens (the model's table may be padded beyond it)
    probability: float = 0.15
    mask_replace: float = 0.8
    random_replace: float = 0.1
    continuation: torch.Tensor | None = None  # bool per id, for whole-word masking

    def __call__(self, input_ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (masked input_ids, labels with -100 where nothing is predicted). Shapes (B, L)."""
        ids = input_ids.clone()
        special = torch.isin(ids, torch.tensor(self.special_ids, dtype=ids.dtype))
        draw = torch.rand(ids.shape, generator=generator)
        if self.continuation is None:
            selected = (draw < self.probability) & ~special
        else:
            # choose word starts, then extend each choice over the word's continuation pieces
            cont = self.continuation[ids.long()] & ~special  # (B, L): piece continues a word
            positions = torch.arange(ids.shape[1]).expand_as(ids)
            start = torch.cummax(torch.where(cont, 0, positions), dim=1).values  # (B, L): its word's start
            start_draw = draw.gather(1, start)  # every piece of a word shares its first piece's draw
            selected = (start_draw < self.probability) & ~special
        if not selected.any():  # a batch must predict something: pick one token
            candidates = (~special).nonzero()
            pick = candidates[torch.randint(len(candidates), (1,), generator=generator)][0]
            selected[pick[0], pick[1]] = True
        labels = torch.where(selected, ids, torch.full_like(ids, -100))
        action = torch.rand(ids.shape, generator=generator)
        to_mask = selected & (action < self.mask_replace)
        to_random = selected & (action >= self.mask_replace) & (action < self.mask_replace + self.random_replace)
        ids[to_mask] = self.mask_id
        random_ids = torch.randint(self.real_vocab, ids.shape, generator=generator, dtype=ids.dtype)
        # never insert a special token as the "random" replacement
        random_ids = torch.where(
            torch.isin(random_ids, torch.tensor(self.special_ids, dtype=ids.dtype)), ids, random_ids
        )
        ids[to_random] = random_ids[to_random]
        return ids, labels


def build_masker(tokenizer: Any, vocab_size: int, mlm: Any) -> Masker:
    """A Masker for `tokenizer` with the settings of an `mlm:` config section."""
    from lmtune.tokenization import continuation_table

    continuation = torch.from_numpy(continuation_table(tokenizer, vocab_size)) if mlm.whole_word else None
    return Masker(
        mask_id=tokenizer.mask_token_id,
        special_ids=tuple(sorted(set(tokenizer.all_special_ids))),
        real_vocab=len(tokenizer),
        probability=mlm.probability,
        mask_replace=mlm.mask_replace,
        random_replace=mlm.random_replace,
        continuation=continuation,
    )


def batch_generator(seed: int, *position: int) -> torch.Generator:
    """A generator seeded by the run seed and a position (epoch, batch): masks depend on nothing else."""
    mixed = int.from_bytes(hashlib.sha256(repr((seed, *position)).encode()).digest()[:8], "little")
    return torch.Generator().manual_seed(mixed)


def block_batches(
    blocks: np.ndarray | torch.Tensor,
    batch_size: int,
    seed: int,
    epoch: int,
    masker: Masker,
    start: int = 0,
    shuffle: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield masked batches of one epoch, in a seeded order, starting at batch `start`.

    `blocks` is what `pack_blocks` returns (an array, possibly memory-mapped: only each batch's
    rows are read) or a tensor of the same blocks; either gives the same batches, as int64 tensors.
    The last incomplete batch is dropped when shuffling (training); kept otherwise (evaluation).
    """
    n = len(blocks)
    order = torch.randperm(n, generator=batch_generator(seed, epoch, -1)) if shuffle else torch.arange(n)
    n_batches = n // batch_size if shuffle else -(-n // batch_size)
    for index in range(start, n_batches):
        rows = order[index * batch_size : (index + 1) * batch_size]
        input_ids, labels = masker(_gather(blocks, rows), batch_generator(seed, epoch, index))
        yield {"input_ids": input_ids, "labels": labels}


def _gather(blocks: np.ndarray | torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """blocks[rows] as a new int64 tensor, rows in the order given."""
    if isinstance(blocks, torch.Tensor):
        return blocks[rows].long()
    return torch.from_numpy(np.asarray(blocks[rows.numpy()], dtype=np.int64))


# ----------------------------------------------------------------------------------------------
# Classification: tokenize without padding, batch by length, pad per batch


@dataclass
class Encoded:
    """Tokenized classification rows: unpadded ids per row, and the targets (one per row).

    A text read as several windows (`encode_rows` with max_windows > 1) gives several rows; `owners`
    then holds, for each row, the index of its text among the `n_texts` texts encoded.
    """

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    targets: np.ndarray | None
    owners: np.ndarray | None = None
    n_texts: int | None = None

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode_rows(
    tokenizer: Any,
    texts: list[str],
    pairs: list[str] | None,
    max_length: int,
    targets: np.ndarray | None = None,
    max_windows: int = 1,
) -> Encoded:
    """Tokenize (pairs when given) with truncation at `max_length` and no padding.

    With `max_windows` > 1 (single texts only), a longer text becomes up to that many consecutive,
    non-overlapping windows of at most `max_length` tokens, each with the special tokens of a whole
    input and the text's target; what lies past the last window is cut.
    """
    texts = ["" if t is None else str(t) for t in texts]
    pairs = None if pairs is None else ["" if t is None else str(t) for t in pairs]
    if max_windows == 1:
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
        ids = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
        types = [np.asarray(x, dtype=np.int64) for x in enc["token_type_ids"]] if "token_type_ids" in enc else None
        return Encoded(ids, types, targets)
    if pairs is not None:
        raise ValueError("windows read single texts; pairs are cut at max_length")
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"data.max_windows={max_windows} needs a fast (Rust) tokenizer; this checkpoint's is {type(tokenizer).__name__}")
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False, return_overflowing_tokens=True, stride=0)
    owners = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)
    # a window's place within its text: owners is sorted (a text's windows come together, in order),
    # so each row's place is its index less that of its text's first row
    place = np.arange(len(owners)) - np.searchsorted(owners, owners)
    keep = np.flatnonzero(place < max_windows)
    ids = [np.asarray(enc["input_ids"][i], dtype=np.int64) for i in keep]
    types = [np.asarray(enc["token_type_ids"][i], dtype=np.int64) for i in keep] if "token_type_ids" in enc else None
    owners = owners[keep]
    return Encoded(ids, types, None if targets is None else targets[owners], owners, len(texts))


def per_text(encoded: Encoded, outputs: np.ndarray) -> np.ndarray:
    """One output row per text from one per encoded row: a text's windows averaged, each weighted by
    its tokens (a short last window counts for less)."""
    if encoded.owners is None:
        return outputs
    weights = encoded.lengths.astype(np.float64)
    totals = np.zeros(encoded.n_texts or 0, dtype=np.float64)
    np.add.at(totals, encoded.owners, weights)
    sums = np.zeros((len(totals), *outputs.shape[1:]), dtype=np.float64)
    np.add.at(sums, encoded.owners, outputs * weights.reshape(-1, *([1] * (outputs.ndim - 1))))
    return (sums / totals.reshape(-1, *([1] * (outputs.ndim - 1)))).astype(outputs.dtype)


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group: int = 50) -> list[np.ndarray]:
    """Training order: a seeded shuffle, then within windows of `group` batches rows of similar
    length go together (less padding), and the batches themselves are shuffled."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    batches = []
    window = batch_size * group
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Inference order: longest first, so each batch pads little; callers restore input order."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def in_input_order(
    encoded: Encoded, pad_id: int, batch_size: int, compute: Callable[[Iterator[dict[str, torch.Tensor]]], np.ndarray]
) -> np.ndarray:
    """Run `compute` over padded batches of length-sorted rows (it returns one output row per input
    row, concatenated) and give the outputs back in input order, one per text (`per_text`)."""
    groups = sorted_batches(encoded.lengths, batch_size)
    outputs = compute(pad_batch(encoded, rows, pad_id) for rows in groups)
    restored = np.empty_like(outputs)
    restored[np.concatenate(groups)] = outputs
    return per_text(encoded, restored)


def pad_batch(encoded: Encoded, rows: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the rows to the longest one: input_ids, attention_mask, token_type_ids?, labels?."""
    width = max(len(encoded.input_ids[r]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    types = torch.zeros((len(rows), width), dtype=torch.long) if encoded.token_type_ids is not None else None
    for i, r in enumerate(rows):
        n = len(encoded.input_ids[r])
        ids[i, :n] = torch.from_numpy(encoded.input_ids[r])
        mask[i, :n] = 1
        if types is not None:
            types[i, :n] = torch.from_numpy(encoded.token_type_ids[r])
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    if encoded.targets is not None:
        batch["labels"] = torch.from_numpy(encoded.targets[rows])
    return batch
