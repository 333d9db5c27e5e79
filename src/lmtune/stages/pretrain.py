"""`lmtune pretrain`: train a tokenizer and a masked language model from scratch (or pretrain a
masked LM further: model.init_from).

Reads top to bottom: resolve the device, load and split the text, train (or load) the tokenizer,
build the model, pack the text into blocks, create the run dir, train, save. Everything that can
fail because of the user's input fails before the run dir is touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import tokenizers
import torch
from transformers import PretrainedConfig

from lmtune import data, distributed, engine, runs
from lmtune.electra import ElectraPretrainer, build_electra, electra_loss, evaluate_electra
from lmtune.config import Config
from lmtune.errors import DataError
from lmtune.modeling import use_attention, build_mlm, check_compatible, evaluate_mlm, init_from_config, load_mlm, mlm_loss
from lmtune.probe import build_probe, probe_scores
from lmtune.tokenization import load_tokenizer, train_tokenizer
from lmtune.stages.common import open_run, place_run, run_training
from lmtune.ui import TrainingDisplay

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    run_dir: Path
    steps: int
    seconds: float
    metrics: dict[str, float]


def load_corpus(cfg: Config) -> tuple[Any, Any, list[Path]]:
    """The training and validation texts (a seeded held-out fraction when no validation files)."""
    d = cfg.data
    train_ds, files = data.load_texts(d.train, "data.train", d.text_column, d.txt_unit, d.cache_dir)
    if d.validation:
        val_ds, val_files = data.load_texts(d.validation, "data.validation", d.text_column, d.txt_unit, d.cache_dir)
        files = files + val_files
    else:
        train_ds, val_ds = data.split_validation(train_ds, d.validation_fraction, cfg.seed)
    train_ds = data.add_repeats(train_ds, d.repeat, val_ds, d.text_column, d.txt_unit, d.cache_dir)
    log.info("data: %d training and %d validation texts from %d file(s)", len(train_ds), len(val_ds), len(files))
    return train_ds, val_ds, files


def build_tokenizer(cfg: Config, train_ds: Any, resume_from: Path | None = None) -> Any:
    """The checkpoint's own tokenizer when resuming; else model.init_from's, tokenizer.path's, or one
    trained on the training split only (never on validation text).

    A trained tokenizer is cached under the datasets cache, keyed by the training data's fingerprint
    and the tokenizer settings: training is not bit-for-bit deterministic, and reusing the same
    tokenizer is what lets a second run reuse the cached tokenization too. Checkpoints carry the
    tokenizer, so a resumed run keeps the token ids its weights were trained on whatever the cache holds.
    """
    t = cfg.tokenizer
    if resume_from is not None:
        if (resume_from / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(str(resume_from))
            log.info("tokenizer: the checkpoint's own (%d tokens)", len(tokenizer))
            return tokenizer
        log.warning(
            "tokenizer: %s holds none (an older lmtune wrote it), so it is rebuilt from the data: resume with "
            "the data.cache_dir the run started with, or the token ids may not match the weights", resume_from,
        )
    if cfg.model.init_from:
        tokenizer = load_tokenizer(cfg.model.init_from, key="model.init_from")
        log.info("tokenizer: model.init_from's own (%d tokens)", len(tokenizer))
        return tokenizer
    if t.path:
        tokenizer = load_tokenizer(t.path)
        log.info("tokenizer: loaded from %s (%d tokens)", t.path, len(tokenizer))
        return tokenizer
    settings = [train_ds._fingerprint, cfg.model.arch, t.vocab_size, t.lowercase, t.min_frequency, cfg.data.max_length, tokenizers.__version__]
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    cache = Path(cfg.data.cache_dir or datasets.config.HF_DATASETS_CACHE) / "lmtune-tokenizers" / key
    if (cache / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(str(cache))
        log.info("tokenizer: reusing the one trained on this data before (%d tokens, %s)", len(tokenizer), cache)
        return tokenizer
    kind = "byte-level BPE" if cfg.model.arch == "roberta" else "WordPiece"
    log.info("tokenizer: training %s with a target of %d tokens", kind, t.vocab_size)
    tokenizer = train_tokenizer(
        (batch["text"] for batch in train_ds.iter(batch_size=1000)),
        cfg.model.arch,
        t.vocab_size,
        lowercase=t.lowercase,
        min_frequency=t.min_frequency,
        max_length=cfg.data.max_length,
    )
    log.info("tokenizer: %d tokens", len(tokenizer))
    tmp = cache.with_name(f".tmp-{key}-{os.getpid()}")
    try:
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, cache)
    except OSError:  # a read-only or shared cache: training again next time is fine
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def pack(cfg: Config, tokenizer: Any, train_ds: Any, val_ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize and pack both splits into blocks of data.max_length tokens (int32 arrays, memory-mapped
    from the datasets cache, so the corpus need not fit in memory)."""
    d = cfg.data
    train_blocks = data.pack_blocks(train_ds, tokenizer, d.max_length, d.num_proc, "train")
    val_blocks = data.pack_blocks(val_ds, tokenizer, d.max_length, d.num_proc, "validation")
    engine.ensure_training_possible(len(train_blocks) // cfg.train.batch_size, cfg.train, f"data.train ({len(train_blocks)} blocks of {d.max_length} tokens)")
    if len(val_blocks) == 0:
        raise DataError(
            f"the validation text is shorter than one block of data.max_length={d.max_length} tokens: "
            "raise data.validation_fraction or give longer data.validation files"
        )
    log.info(
        "packed %s training tokens into %d blocks; %d validation blocks",
        f"{train_blocks.size:,}", len(train_blocks), len(val_blocks),
    )
    return train_blocks, val_blocks


def pretrain(
    cfg: Config, overwrite: bool = False, resume: bool = False, display: TrainingDisplay | None = None, force: bool = False
) -> PretrainResult:
    """Run a whole pretraining job described by `cfg` (validated for the pretrain stage).

    Raises:
        LmtuneError: for any problem with the config, data, device or output dir (before writing).
    """
    placement, out, resume_from = place_run(cfg, resume, overwrite, force)
    electra = cfg.mlm.objective == "electra"
    # read (and a wrong checkpoint refused) before the corpus loads
    init_config = init_from_config(cfg.model.init_from) if cfg.model.init_from else None

    clock = runs.PhaseClock()
    with distributed.main_first():  # the other processes reuse rank 0's tokenizer and caches
        with clock.phase("load_s"):
            train_ds, val_ds, files = load_corpus(cfg)
        with clock.phase("tokenizer_s"):
            tokenizer = build_tokenizer(cfg, train_ds, resume_from)
        with clock.phase("model_s"):
            model = build_model(cfg, tokenizer, init_config)
            check_compatible(model, tokenizer, cfg.data.max_length)
            log.info("attention: %s", use_attention(model, cfg.model.attention, placement.device, placement.precision))
        n_params = sum(p.numel() for p in model.base_model.parameters())
        arch = model.config.model_type  # ELECTRA's pretrainer answers with its discriminator's
        log.info(
            "model: %s%s, %d layers x %d wide, vocab %d, %.2fM parameters%s",
            arch, f" from {cfg.model.init_from}" if cfg.model.init_from else "", model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size, n_params / 1e6,
            f" (ELECTRA: a {cfg.mlm.generator_layers}-layer generator trains beside it)" if electra else "",
        )
        with clock.phase("pack_s"):
            train_blocks, val_blocks = pack(cfg, tokenizer, train_ds, val_ds)
        probe = None
        if cfg.probe is not None and distributed.is_main():
            probe = build_probe(cfg.probe, tokenizer, cfg.data.max_length, cfg.seed, cfg.data.cache_dir)
            log.info("probe: %d training and %d held-out labelled rows", len(probe.y_train), len(probe.y_validation))

    run_dir = open_run(
        cfg,
        out,
        overwrite,
        resume_from,
        command="pretrain",
        placement=placement.as_dict(),
        timings=clock.seconds,
        data={
            "fingerprint": data.fingerprint(files),
            "files": len(files),
            "train_blocks": len(train_blocks),
            "validation_blocks": len(val_blocks),
            "block_size": cfg.data.max_length,
        },
        model={"arch": arch, "parameters": n_params, "vocab_size": model.config.vocab_size, "init_from": cfg.model.init_from},
        tokenizer_size=len(tokenizer),
    )

    masker = data.build_masker(tokenizer, model.config.vocab_size, cfg.mlm)
    t = cfg.train
    eval_cap = t.eval_max_batches

    def batches(epoch: int, first: int):
        return data.block_batches(train_blocks, t.batch_size, cfg.seed, epoch, masker, start=first)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        # a fixed "epoch" (-1) keeps validation masks identical at every evaluation
        stream = data.block_batches(val_blocks, t.batch_size, cfg.seed, -1, masker, shuffle=False)
        capped = (b for i, b in zip(range(eval_cap or 1 << 62), stream))
        metrics = evaluate_electra(model, capped, placement.device, cfg.seed) if electra else evaluate_mlm(model, capped, placement.device)
        if probe is not None:
            metrics.update(probe_scores(model, probe, t.batch_size, placement.device))
        return metrics

    task = engine.Task(
        model=model,
        batches=batches,
        batches_per_epoch=len(train_blocks) // t.batch_size,
        loss=electra_loss if electra else mlm_loss,
        save=partial(_save, tokenizer=tokenizer),
        save_assets=tokenizer.save_pretrained,
        count=lambda batch: batch["input_ids"].numel(),
        unit="tokens",
        evaluate=evaluate,
    )
    with clock.phase("train_s"):  # the optimizer steps, evaluations, checkpoints and the final save
        result = run_training(task, cfg, placement, run_dir, display, resume_from)
    if distributed.is_main():
        runs.update_manifest(run_dir, timings=clock.seconds)
    log.info("saved the model and tokenizer to %s (%s)", run_dir / "final", clock.summary())
    return PretrainResult(run_dir=run_dir, steps=result.steps, seconds=result.seconds, metrics=result.last_eval)


def build_model(cfg: Config, tokenizer: Any, init_config: PretrainedConfig | None) -> torch.nn.Module:
    """The masked LM to pretrain (new, or model.init_from's, whose config is `init_config`, to pretrain
    further), or for `mlm.objective: electra` the encoder with its generator."""
    if init_config is not None:
        return load_mlm(cfg.model, init_config)
    if cfg.mlm.objective == "electra":
        return build_electra(cfg.model, tokenizer, cfg.seed, cfg.mlm.generator_layers, cfg.mlm.discriminator_weight)
    return build_mlm(cfg.model, tokenizer, cfg.seed)


def _save(model: torch.nn.Module, path: Path, tokenizer: Any) -> None:
    # ELECTRA keeps the discriminator's encoder alone: a plain HF encoder, fine-tunable anywhere
    runs.save_hf_checkpoint(model.discriminator if isinstance(model, ElectraPretrainer) else model, tokenizer, path)
