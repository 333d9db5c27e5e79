"""Train a tokenizer with the `tokenizers` library and wrap it for transformers.

BERT gets WordPiece (BERT's normaliser and pre-tokeniser, `##` continuation pieces); RoBERTa gets
byte-level BPE (GPT-2's byte alphabet, so no text is ever unknown). Both carry every special token
and a post-processor that adds them, so `AutoTokenizer.from_pretrained(dir)` behaves like the
original model's tokenizer. Does not decide the model's vocabulary size: modeling.py rounds it up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lmtune.errors import ConfigError

log = logging.getLogger(__name__)

BERT_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
# RoBERTa's order puts <pad> at id 1, which its position ids rely on (padding_idx=1).
ROBERTA_SPECIALS = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "mask_token": "<mask>"}


def round_up(value: int, multiple: int = 64) -> int:
    """Round up to a multiple (embedding tables whose size is a multiple of 64 run faster)."""
    return -(-value // multiple) * multiple


def _wordpiece(lowercase: bool) -> tuple[Tokenizer, list[str]]:
    specials = list(BERT_SPECIALS.values())
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok, specials


def _byte_level_bpe(lowercase: bool) -> tuple[Tokenizer, list[str]]:
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok, specials


def train_tokenizer(
    texts: Iterable[str],
    arch: str,
    vocab_size: int,
    lowercase: bool = True,
    min_frequency: int = 2,
    max_length: int = 512,
    length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a WordPiece (bert, modernbert) or byte-level BPE (roberta) tokenizer on `texts`.

    Args:
        texts: the training text, one document (or paragraph) per item.
        arch: "bert" or "modernbert" (WordPiece) or "roberta" (byte-level BPE).
        vocab_size: the target vocabulary size, special tokens included.
        lowercase: lowercase (and, for WordPiece, strip accents) before tokenizing.
        min_frequency: how often a piece must occur to enter the vocabulary.
        max_length: the model's sequence limit, stored as `model_max_length`.
        length: number of texts, for the progress estimate only.
    """
    if arch != "roberta":
        tok, specials = _wordpiece(lowercase)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, show_progress=False
        )
    else:
        tok, specials = _byte_level_bpe(lowercase)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return wrap(tok, arch, max_length)


def wrap(tok: Tokenizer, arch: str, max_length: int) -> PreTrainedTokenizerFast:
    """Add the special-token post-processor and wrap as a transformers tokenizer."""
    if arch != "roberta":
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        # ModernBERT has no segment embeddings, so its tokenizer returns no token_type_ids
        names = ["input_ids", "attention_mask"] if arch == "modernbert" else ["input_ids", "token_type_ids", "attention_mask"]
        special_map = {**BERT_SPECIALS, "model_input_names": names}
    else:
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), trim_offsets=True
        )
        special_map = {**ROBERTA_SPECIALS, "cls_token": "<s>", "sep_token": "</s>"}
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **special_map)


def load_tokenizer(path: str, key: str = "tokenizer.path") -> PreTrainedTokenizerBase:
    """Load an existing tokenizer dir (`key`: tokenizer.path, or the checkpoint of model.init_from), with
    a clear error when it is not one."""
    hint = "set it to null to train one" if key == "tokenizer.path" else "give a checkpoint dir saved with its tokenizer"
    if not Path(path).is_dir():
        raise ConfigError(f"{key}={path!r} is not a directory: point it at a saved tokenizer, or {hint}")
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}={path!r} holds no loadable tokenizer ({exc}); {hint}") from None
    missing = [name for name in ("pad_token", "mask_token", "unk_token") if getattr(tok, name) is None]
    if tok.cls_token is None and tok.bos_token is None:
        missing.append("cls_token")
    if tok.sep_token is None and tok.eos_token is None:
        missing.append("sep_token")
    if missing:
        raise ConfigError(f"{key}={path!r}: the tokenizer lacks {', '.join(missing)}, which masked-LM pretraining needs")
    return tok


def continuation_table(tokenizer: PreTrainedTokenizerBase, size: int) -> np.ndarray:
    """A boolean per token id: True where the piece continues a word (for whole-word masking).

    WordPiece marks continuations with `##`; byte-level BPE marks word starts with `Ġ` (a space).
    """
    table = np.zeros(size, dtype=bool)
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    wordpiece = any(t.startswith("##") for t in vocab)
    for token, idx in vocab.items():
        if idx >= size or idx in special:
            continue
        table[idx] = token.startswith("##") if wordpiece else not token.startswith("\u0120")
    return table


def batched(items: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    """Yield lists of up to `size` items (the tokenizer trainer is faster on batches)."""
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_checkpoint_tokenizer(checkpoint: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model checkpoint (a local dir, or a hub name when online).

    Raises:
        ConfigError: when the dir does not exist, holds no model, or has no tokenizer.
    """
    from lmtune.config import looks_local
    from lmtune.data import hub_reachable

    path = Path(checkpoint)
    if not (looks_local(checkpoint) or path.exists()) and not hub_reachable():
        raise ConfigError(
            f"model.checkpoint={checkpoint!r} is not a local dir (relative paths resolve against {Path.cwd()}) "
            "and the Hugging Face hub is not reachable to download it: point it at a checkpoint dir"
        )
    if looks_local(checkpoint) or path.exists():
        if not path.is_dir():
            raise ConfigError(f"model.checkpoint={checkpoint!r} does not exist: point it at a checkpoint dir such as runs/NAME/final")
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.checkpoint={checkpoint!r} is not a model dir (no config.json in it)")
        # transformers builds an empty tokenizer rather than failing when the files are missing
        if not any((path / name).is_file() for name in ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json")):
            raise ConfigError(f"model.checkpoint={checkpoint!r} has no tokenizer files (tokenizer.json, vocab.txt ...)")
    if trust_remote_code:
        log.warning("model.trust_remote_code is true: Python code shipped with %s may run", checkpoint)
    try:
        return AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = "the dir has no usable tokenizer files" if path.is_dir() else "it is not a local dir and the hub is not reachable"
        raise ConfigError(f"model.checkpoint={checkpoint!r}: cannot load its tokenizer ({where}: {first})") from None
