"""Load, merge, override and validate lmtune's YAML configs.

A config is a YAML mapping that may start with `extends: other.yaml` (relative to the file, deep-merged,
chains allowed). `--set key.path=value` overrides are parsed as YAML and win over the file. The result
is validated against a typed schema (pydantic, unknown keys rejected with a did-you-mean) and then by
cross-field rules; every problem is reported together in one `ConfigError`. Relative paths resolve
against the directory the command runs in.

This module knows nothing about torch or training: it only turns files into a validated `Config`.
"""

from __future__ import annotations

import copy
import difflib
import glob
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmtune.errors import ConfigError

# Model sizes for pretraining: (layers, hidden, attention heads, feed-forward width).
# tiny/mini/small/medium follow the BERT miniatures of Turc et al. (2019); base is BERT-base.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512},
    "mini": {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024},
    "small": {"num_hidden_layers": 4, "hidden_size": 512, "num_attention_heads": 8, "intermediate_size": 2048},
    "medium": {"num_hidden_layers": 8, "hidden_size": 512, "num_attention_heads": 8, "intermediate_size": 2048},
    "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
}

DEFAULT_MAX_POSITIONS = 512  # BERT's position limit; RoBERTa adds 2 (its positions start after the pad id)
SPECIAL_TOKEN_COUNT = 5  # [PAD] [UNK] [CLS] [SEP] [MASK] / <s> <pad> </s> <unk> <mask>
MIN_VOCAB_SIZE = 64  # special tokens plus room for an alphabet; anything smaller cannot tokenize text

Stage = Literal["pretrain", "finetune"]


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# files, dirs or globs: a list, or one string standing for a list of one
Sources = Annotated[list[str], BeforeValidator(_one_or_many)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    """Which network to build (pretrain) or load (finetune)."""

    arch: Literal["bert", "roberta", "modernbert"] = Field(
        "bert",
        description="pretrain: architecture to build: bert | roberta | modernbert (pre-norm, GeGLU, rotary positions)",
    )
    preset: Literal["tiny", "mini", "small", "medium", "base"] | None = Field(
        "mini", description="pretrain: model size; explicit sizes below override it"
    )
    checkpoint: str | None = Field(None, description="finetune: a local Hugging Face checkpoint dir (or hub name)")
    init_from: str | None = Field(
        None,
        description="pretrain: continue pretraining this local masked-LM checkpoint dir (BERT, RoBERTa or ModernBERT, "
        "with its tokenizer) on data.train instead of building a new model; it brings its own architecture, sizes "
        "and tokenizer, so model.arch and model.preset are not used",
    )
    num_hidden_layers: int | None = Field(None, gt=0, description="transformer layers (overrides the preset)")
    hidden_size: int | None = Field(None, gt=0, description="model width (overrides the preset)")
    num_attention_heads: int | None = Field(None, gt=0, description="attention heads; must divide hidden_size")
    intermediate_size: int | None = Field(None, gt=0, description="feed-forward width (overrides the preset)")
    max_position_embeddings: int | None = Field(
        None, gt=0, description="position limit; null: 512 (RoBERTa: 514, its offset of 2 included)"
    )
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="hidden and attention dropout; null: 0 for pretraining (Cramming)"
    )
    trust_remote_code: bool = Field(
        False, description="finetune/eval: run Python code shipped with a checkpoint (only for checkpoints you trust)"
    )
    attention: Literal["auto", "eager", "sdpa"] = Field(
        "auto",
        description="attention kernel; auto: on the CPU eager for BERT and RoBERTa, and for ModernBERT in bf16 (faster there), sdpa otherwise",
    )
    hf_config: dict[str, Any] = Field(
        default_factory=dict, description="any other field of BertConfig/RobertaConfig/ModernBertConfig, set as is"
    )


class TokenizerSection(_Section):
    """The tokenizer: trained on data.train, or reused from a directory."""

    path: str | None = Field(None, description="reuse this tokenizer dir; null trains one on data.train")
    vocab_size: int = Field(8192, gt=0, description="target vocabulary; the model's rounds up to a multiple of 64")
    lowercase: bool = Field(True, description="lowercase text before tokenizing")
    min_frequency: int = Field(2, ge=1, description="a merge/word piece must occur this often to enter the vocab")


class DataSection(_Section):
    """Where the text comes from and how it is cut."""

    train: Sources = Field(default_factory=list, description="files, dirs or globs (.txt .jsonl .json .csv .tsv .parquet)")
    validation: Sources | None = Field(None, description="null: hold out validation_fraction of train")
    test: Sources | None = Field(None, description="test files (finetune/eval)")
    repeat: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="pretrain: data.train entries whose training documents appear this many times "
        "(held-out ones never train): weight a task's own text over a general corpus",
    )
    validation_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="share of train documents held out")
    text_column: str = Field("text", description="column holding the text in tabular/JSON files")
    text_pair_column: str | None = Field(None, description="finetune: second text for pair tasks")
    label_column: str = Field("label", description="finetune: column holding the label")
    max_length: int = Field(128, ge=8, description="tokens per sequence (pretraining packs blocks of this size)")
    max_windows: int = Field(
        1, ge=1, description="finetune: a text longer than max_length is read as up to this many consecutive windows "
        "of max_length tokens, each trained on with the text's label; its scores are the mean over its windows "
        "(weighted by their tokens), in validation, eval and predict alike. 1: cut at max_length",
    )
    txt_unit: Literal["document", "paragraph", "line"] = Field(
        "paragraph", description=".txt files: one document per file, per blank-line paragraph, or per line"
    )
    num_proc: int | None = Field(None, ge=1, description="processes for tokenization; null: one (tokenizers already uses every core)")
    cache_dir: str | None = Field(None, description="datasets cache dir; null: the Hugging Face default")


class MLMSection(_Section):
    """Masked-language-model objective (pretrain)."""

    probability: float = Field(0.15, gt=0.0, lt=1.0, description="share of tokens selected for prediction")
    mask_replace: float = Field(0.8, ge=0.0, le=1.0, description="of the selected: share replaced by the mask token")
    random_replace: float = Field(0.1, ge=0.0, le=1.0, description="of the selected: share replaced by a random token")
    whole_word: bool = Field(False, description="select whole words rather than single word pieces")
    objective: Literal["mlm", "electra"] = Field(
        "mlm",
        description="mlm: predict the selected tokens; electra: a small generator fills them in and the model "
        "learns to spot the replaced tokens, a signal from every token (replaced-token detection)",
    )
    generator_layers: int = Field(
        1, ge=1, description="electra: layers of the generator (the model's width, token embeddings shared with it)"
    )
    discriminator_weight: float = Field(
        50.0, gt=0.0, description="electra: weight of the replaced-token loss against the generator's masked-LM loss"
    )


class TrainSection(_Section):
    """The optimisation loop (shared by pretraining and fine-tuning)."""

    batch_size: int = Field(32, ge=1, description="sequences per step per process (before accumulation)")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated into one optimizer step")
    batch_ramp: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="share of the budget over which each step grows from 1 micro-batch to train.grad_accum, in equal "
        "stages (small batches early, larger late); 0: no ramp. Needs train.max_steps or train.max_minutes",
    )
    lr: float = Field(5.0e-4, gt=0.0, description="peak learning rate")
    epochs: float | None = Field(None, gt=0, description="passes over the training data")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps")
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget; the LR schedule is fitted to it")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="decay after warmup")
    warmup: float | None = Field(
        None, ge=0.0, lt=1.0, description="warmup as a fraction of the run; null: 0.06 unless warmup_steps is set"
    )
    warmup_steps: int | None = Field(None, ge=0, description="warmup in steps (instead of train.warmup)")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay (not on biases and norms)")
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1")
    adam_beta2: float = Field(0.98, ge=0.0, lt=1.0, description="AdamW beta2")
    adam_eps: float = Field(1.0e-6, gt=0.0, description="AdamW epsilon")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="gradient clipping; null: none")
    log_every: int = Field(10, ge=1, description="optimizer steps between metric log lines")
    eval_every: Annotated[int, Field(ge=1)] | Literal["epoch"] | None = Field(
        500, description="steps between evaluations, or 'epoch'; null: only at the end"
    )
    eval_max_batches: int | None = Field(50, ge=1, description="pretrain: cap on validation batches per evaluation (fine-tuning always evaluates the whole validation split)")
    save_every: int | None = Field(1000, ge=1, description="steps between resumable checkpoints; null: none")
    keep_last: int = Field(2, ge=1, description="resumable checkpoints kept")
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a NaN/inf loss or gradient: stop (the last checkpoint stays) or skip that update and count it"
    )
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch; null: one per core")
    compile: bool = Field(
        False,
        description="torch.compile the encoder (tens of seconds of compilation first; measured faster for ModernBERT, not BERT, on a CPU)",
    )

    @model_validator(mode="after")
    def _ramp_needs_room_and_a_fixed_budget(self) -> TrainSection:
        if self.batch_ramp:
            if self.grad_accum == 1:
                raise ValueError("batch_ramp grows each step from 1 micro-batch to grad_accum: set grad_accum above 1")
            if self.epochs is not None or self.eval_every == "epoch":
                raise ValueError(
                    "batch_ramp changes how many steps an epoch takes: bound the run with max_steps or max_minutes, "
                    "not epochs, and give eval_every in steps"
                )
        return self


class FinetuneSection(_Section):
    """Classification-specific settings (finetune)."""

    problem: Literal["auto", "single_label", "multi_label", "regression"] = Field(
        "auto", description="auto infers it from the label column: lists -> multi_label, fractional numbers -> regression"
    )
    select_metric: str | None = Field(
        None, description="metric that picks best/; null: f1_macro (single-label), f1_micro (multi-label), pearson (regression)"
    )
    patience: int | None = Field(None, ge=1, description="stop after this many evaluations without improvement")
    class_weights: Literal["auto"] | list[float] | None = Field(
        None, description="single-label loss weights: auto (inverse training frequency), a list per label, or null"
    )
    layerwise_lr_decay: float | None = Field(
        None, gt=0.0, le=1.0, description="the head learns at train.lr, the top encoder layer at lr x this, each layer below one more factor, the embeddings last"
    )
    freeze_embeddings: bool = Field(False, description="keep the embedding layer fixed")


class ProbeSection(_Section):
    """Pretraining quality probe: at each evaluation, a logistic regression on frozen mean-pooled
    features of a labelled set says how useful the encoder already is for classification."""

    train: Sources = Field(default_factory=list, description="labelled files the probe is fitted on")
    validation: Sources | None = Field(None, description="labelled files it is scored on; null: 20% of train")
    text_column: str = Field("text", description="column holding the text")
    label_column: str = Field("label", description="column holding the (single) label")
    max_rows: int = Field(2000, ge=10, description="cap on the training rows and on the held-out rows (each a seeded sample), to keep evaluations quick")


class Config(_Section):
    """A whole lmtune config: one YAML file plus overrides."""

    output_dir: str | None = Field(None, description="run directory (required for pretrain/finetune)")
    seed: int = Field(0, description="seeds data order, masking, initialisation and the validation split")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto | fp32 | bf16 | fp16")
    model: ModelSection = Field(default_factory=ModelSection)
    tokenizer: TokenizerSection = Field(default_factory=TokenizerSection)
    data: DataSection = Field(default_factory=DataSection)
    mlm: MLMSection = Field(default_factory=MLMSection)
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)
    train: TrainSection = Field(default_factory=TrainSection)
    probe: ProbeSection | None = Field(None, description="pretrain: a linear probe on labelled data at each evaluation")

    @field_validator("device")
    @classmethod
    def _device_syntax(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value


# ----------------------------------------------------------------------------------------------
# Loading: YAML files, extends, overrides


class _Loader(yaml.SafeLoader):
    """`yaml.safe_load`, except that `1e-4` and `3E5` are floats (YAML 1.1 insists on a dot)."""


# YAML 1.1's float pattern plus exponent notation without a dot (`1e-4`, `3E5`, `0E0`)
FLOAT_PATTERN = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_PATTERN, list("-+0123456789."))


MAX_CONFIG_BYTES = 1 << 20  # a config is a few kilobytes; anything near a megabyte is a mistake (or an attack)
MAX_CONFIG_NODES = 100_000  # values after expanding YAML aliases (`&a` / `*a` can multiply a small file)
MAX_CONFIG_DEPTH = 50


class YAMLLimitError(ValueError):
    """YAML that is too large, too deep or expands too much to be a config."""


def yaml_load(text: str) -> Any:
    """Parse YAML safely (no object construction), reading exponent floats as floats, and refuse
    documents that are huge, nested too deeply or that expand through aliases beyond a config's size."""
    if len(text) > MAX_CONFIG_BYTES:
        raise YAMLLimitError(f"it is {len(text):,} characters long; a config holds at most {MAX_CONFIG_BYTES:,}")
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except RecursionError:
        raise YAMLLimitError("it is nested too deeply") from None
    _check_shape(data)
    return data


def _check_shape(data: Any) -> None:
    """Walk the parsed value as if aliases were expanded, stopping at the node and depth limits."""
    stack, nodes = [(data, 1)], 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_CONFIG_NODES:
            raise YAMLLimitError(f"it expands to more than {MAX_CONFIG_NODES:,} values (through aliases?)")
        if depth > MAX_CONFIG_DEPTH:
            raise YAMLLimitError(f"it is nested more than {MAX_CONFIG_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is not a plausible config: it is {path.stat().st_size:,} bytes")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    except YAMLLimitError as exc:
        raise ConfigError(f"config file {path} is not a plausible config: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys (got a {type(data).__name__})")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return `base` updated by `update`, merging nested mappings key by key."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def flat_keys(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as {"section.key": value}, e.g. {"train.lr": 3e-4}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flat_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_raw(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file and everything it `extends`, merged (the file wins over its base)."""
    path = Path(path).expanduser().resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"config files extend each other in a cycle: {cycle}")
    data = _read_yaml(path)
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    if not isinstance(base_name, str):
        raise ConfigError(f"{path}: extends must be a file name, got {base_name!r}")
    base = load_raw(path.parent / base_name, (*_chain, path))
    return deep_merge(base, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (['a', 'b'], value parsed as YAML)."""
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, for example --set train.lr=3e-4")
    parts = key.split(".")
    if any(not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ConfigError(f"--set {text!r}: {key!r} is not a dotted key such as train.lr")
    try:
        value = yaml_load(value_text) if value_text.strip() else None
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({problem}); quote it") from None
    except YAMLLimitError as exc:
        raise ConfigError(f"--set {text[:60]!r}...: the value is not a plausible setting: {exc}") from None
    return parts, value


def apply_override(raw: dict[str, Any], text: str) -> dict[str, Any]:
    """Return `raw` with one `--set key.path=value` applied."""
    parts, value = parse_override(text)
    raw = copy.deepcopy(raw)
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {text!r}: {where} is a value ({child!r}), not a section with keys")
        node = child
    node[parts[-1]] = value
    return raw


# ----------------------------------------------------------------------------------------------
# Validation


def _section_model(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        # a section that may be null (`probe: ProbeSection | None`) is a union: look inside it
        candidates = [annotation, *typing.get_args(annotation)]
        sections = [a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)]
        if not sections:
            return None
        model = sections[0]
    return model


def _key_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """`loc` less pydantic's tags for the member of a union it tried (`train.eval_every.constrained-int`
    is the key `train.eval_every`); list indices stay."""
    model: type[BaseModel] | None = Config
    kept: list[Any] = []
    for part in loc:
        if isinstance(part, int):
            kept.append(part)
        elif model is not None:  # a key of a section (an unknown one, for extra_forbidden, ends the walk)
            kept.append(part)
            known = str(part) in model.model_fields
            model = _section_model(tuple(p for p in kept if not isinstance(p, int))) if known else None
        # else: inside a value that is not a section, so a union member's tag: dropped
    return tuple(kept)


def _format_errors(errors: list[dict[str, Any]]) -> list[str]:
    """One message per key: the failures of each member of a union key are joined with 'or'."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for err in errors:
        loc = _key_path(tuple(err["loc"]))
        if loc in merged and err["type"] != "extra_forbidden":
            merged[loc]["msg"] += f", or {err['msg'][0].lower()}{err['msg'][1:]}"
        else:
            merged[loc] = {**err, "loc": loc}
    return [_format_error(e) for e in merged.values()]


def _format_error(err: dict[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if not isinstance(p, int))
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        section = _section_model(loc[:-1]) or Config
        valid = list(section.model_fields)
        unknown = str(loc[-1])
        hint = difflib.get_close_matches(unknown, valid, n=1)
        did_you_mean = f" Did you mean '{'.'.join([*map(str, loc[:-1]), hint[0]])}'?" if hint else ""
        return f"unknown key '{key}'.{did_you_mean} Valid keys here: {', '.join(valid)}"
    got = err.get("input")
    shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:77] + "..."
    return f"{key}: {err['msg']} (got {shown})"


def _cross_checks(cfg: Config, stage: Stage | None) -> list[str]:
    """Rules that involve more than one key. Returns every problem found."""
    problems: list[str] = []
    t, m, d = cfg.train, cfg.model, cfg.data
    if t.warmup_steps is not None and t.warmup is not None:
        problems.append("train.warmup and train.warmup_steps are both set: choose one")
    if cfg.mlm.mask_replace + cfg.mlm.random_replace > 1.0:
        problems.append(
            f"mlm.mask_replace + mlm.random_replace = {cfg.mlm.mask_replace + cfg.mlm.random_replace:g} "
            "exceeds 1: they are shares of the selected tokens (default 0.8 and 0.1)"
        )
    if stage is None:
        return problems
    if not cfg.output_dir:
        problems.append(f"output_dir is required for {stage}: set it in the file or pass --output-dir DIR")
    if not d.train:
        problems.append(f"data.train is empty: list the files, directories or globs to {stage} on")
    if t.epochs is None and t.max_steps is None and t.max_minutes is None:
        problems.append("nothing bounds the run: set train.epochs, train.max_steps or train.max_minutes")
    if stage == "pretrain":
        if m.checkpoint is not None:
            problems.append(
                f"model.checkpoint={m.checkpoint!r} is for finetune; pretrain builds a new model from "
                "model.arch and model.preset (or continues model.init_from): remove model.checkpoint"
            )
        sizes = resolved_model_sizes(m)
        missing = [k for k, v in sizes.items() if v is None]
        if m.init_from is not None:
            problems.extend(_init_from_problems(cfg))
        elif missing:
            problems.append(f"model.preset is null, so set every size explicitly: missing model.{', model.'.join(missing)}")
        elif sizes["hidden_size"] % sizes["num_attention_heads"]:
            problems.append(
                f"model.hidden_size={sizes['hidden_size']} is not divisible by "
                f"model.num_attention_heads={sizes['num_attention_heads']}"
            )
        elif cfg.mlm.objective == "electra" and cfg.mlm.generator_layers >= sizes["num_hidden_layers"]:
            problems.append(
                f"mlm.generator_layers={cfg.mlm.generator_layers} is not below the model's "
                f"{sizes['num_hidden_layers']} layers: ELECTRA's generator must be weaker than the model it trains "
                "(a quarter of its layers is a good start)"
            )
        limit = max_sequence_length(m)
        if m.init_from is None and d.max_length > limit:
            problems.append(
                f"data.max_length={d.max_length} exceeds the model's position limit of {limit}: "
                f"lower data.max_length or raise model.max_position_embeddings"
            )
        if cfg.tokenizer.path is None and m.init_from is None and cfg.tokenizer.vocab_size < MIN_VOCAB_SIZE:
            problems.append(
                f"tokenizer.vocab_size={cfg.tokenizer.vocab_size} leaves no room beyond the "
                f"{SPECIAL_TOKEN_COUNT} special tokens and the alphabet: use at least {MIN_VOCAB_SIZE}"
            )
        problems.extend(_check_hf_config_keys(m))
        if d.max_windows > 1:
            problems.append("data.max_windows reads long texts in fine-tuning; pretraining packs all text into blocks: remove it")
        unknown = [entry for entry in d.repeat if entry not in d.train]
        if unknown:
            problems.append(
                f"data.repeat names {', '.join(map(repr, unknown))}, which data.train does not list: "
                "use a data.train entry exactly as written there"
            )
        if cfg.probe is not None and not cfg.probe.train:
            problems.append("probe.train is empty: list the labelled files to probe with, or remove the probe section")
        if cfg.probe is not None and t.eval_every is None:
            problems.append("the probe runs at each evaluation, but train.eval_every is null: set it to a step count")
    if stage == "finetune":
        if m.init_from is not None:
            problems.append(
                f"model.init_from={m.init_from!r} continues pretraining; finetune starts from model.checkpoint: "
                "remove model.init_from"
            )
        if d.repeat:
            problems.append("data.repeat weights pretraining text; finetune does not use it: remove it")
        if not m.checkpoint:
            problems.append("model.checkpoint is required for finetune: a checkpoint dir, e.g. runs/mini/final")
        if m.hf_config:
            problems.append("model.hf_config shapes a new model in pretrain; finetune keeps the checkpoint's config: remove it")
        if sizes := explicit_sizes(m):
            problems.append(f"model.{sizes[0]} sizes a new model in pretrain; finetune keeps the checkpoint's sizes: remove it")
        if d.max_windows > 1 and d.text_pair_column:
            problems.append(
                f"data.max_windows={d.max_windows} reads long single texts as windows; a pair task "
                "(data.text_pair_column) cuts at data.max_length: set data.max_windows to 1"
            )
        weights = cfg.finetune.class_weights
        if isinstance(weights, list) and any(w <= 0 for w in weights):
            problems.append(f"finetune.class_weights={weights}: every weight must be positive")
    return problems


def _init_from_problems(cfg: Config) -> list[str]:
    """What cannot go with continuing a checkpoint's pretraining: anything that would shape a new model."""
    m = cfg.model
    problems = []
    if sizes := explicit_sizes(m):
        problems.append(f"model.{sizes[0]} sizes a new model; model.init_from={m.init_from!r} keeps the checkpoint's sizes: remove it")
    if m.hf_config:
        problems.append(f"model.hf_config shapes a new model; model.init_from={m.init_from!r} keeps the checkpoint's config: remove it")
    if cfg.tokenizer.path is not None:
        problems.append(
            f"tokenizer.path={cfg.tokenizer.path!r}: model.init_from={m.init_from!r} brings the tokenizer its weights "
            "were trained with: remove tokenizer.path"
        )
    if cfg.mlm.objective == "electra":
        problems.append("mlm.objective=electra trains a new generator beside a new model; model.init_from continues a masked LM: use mlm.objective=mlm")
    return problems


def _check_hf_config_keys(m: ModelSection) -> list[str]:
    if not m.hf_config:
        return []
    from transformers import BertConfig, ModernBertConfig, RobertaConfig  # lazy: only configs that use hf_config pay

    config_class = {"bert": BertConfig, "roberta": RobertaConfig, "modernbert": ModernBertConfig}[m.arch]
    known = set(config_class().to_dict())
    problems = []
    for key in m.hf_config:
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            extra = f" Did you mean '{hint[0]}'?" if hint else ""
            problems.append(f"unknown key 'model.hf_config.{key}': not a field of {config_class.__name__}.{extra}")
        elif key in ModelSection.model_fields:
            problems.append(f"model.hf_config.{key}: set it as model.{key}, not in hf_config")
        elif key in {"vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"}:
            problems.append(f"model.hf_config.{key}: the tokenizer decides it (see tokenizer.vocab_size); remove it")
    return problems


def resolved_model_sizes(m: ModelSection) -> dict[str, int | None]:
    """Layer count and widths: the preset, overridden by any size set explicitly."""
    base = PRESETS.get(m.preset or "", {})
    return {k: getattr(m, k) if getattr(m, k) is not None else base.get(k) for k in PRESETS["mini"]}


def explicit_sizes(m: ModelSection) -> list[str]:
    """The size fields set explicitly: they shape a new model, so a config that loads one cannot use them."""
    return [k for k in [*PRESETS["mini"], "max_position_embeddings"] if getattr(m, k) is not None]


def max_sequence_length(m: ModelSection) -> int:
    """The longest sequence the model's position embeddings allow (RoBERTa loses 2 to its offset)."""
    offset = 2 if m.arch == "roberta" else 0
    positions = m.max_position_embeddings or DEFAULT_MAX_POSITIONS + offset
    return positions - offset


def validate(raw: dict[str, Any], stage: Stage | None = None, source: str = "config") -> Config:
    """Validate a merged raw mapping; raise one ConfigError listing every problem."""
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        problems = _format_errors(exc.errors())
        raise ConfigError(_problem_list(source, problems)) from None
    problems = _cross_checks(cfg, stage)
    if problems:
        raise ConfigError(_problem_list(source, problems))
    return cfg


def _problem_list(source: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    return f"{source} has {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)


# ----------------------------------------------------------------------------------------------
# Paths

_KNOWN_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".yaml", ".yml")


def looks_local(entry: str, cwd: Path | None = None) -> bool:
    """True when `entry` names a local path or glob rather than a hub name like `imdb` or `org/name`."""
    if entry.startswith(("/", "./", "../", "~")) or glob.has_magic(entry):
        return True
    if entry.lower().endswith(_KNOWN_SUFFIXES) or os.path.exists((cwd or Path.cwd()) / entry):
        return True
    return entry.count("/") > 1 or "\\" in entry


def _abs(entry: str, cwd: Path) -> str:
    path = cwd / Path(entry).expanduser()
    return str(path.resolve()) if not glob.has_magic(entry) else str(path)


def resolve_paths(cfg: Config, cwd: Path | None = None) -> Config:
    """Make every local path in the config absolute, relative to `cwd` (default: the working dir)."""
    cwd = cwd or Path.cwd()

    def fix(entry: str | None) -> str | None:
        return _abs(entry, cwd) if entry is not None and looks_local(entry, cwd) else entry

    def fix_list(entries: list[str] | None) -> list[str] | None:
        return None if entries is None else [fix(e) for e in entries]  # type: ignore[misc]

    data = cfg.data.model_copy(
        update={
            "train": fix_list(cfg.data.train),
            "validation": fix_list(cfg.data.validation),
            "test": fix_list(cfg.data.test),
            "repeat": {fix(entry): times for entry, times in cfg.data.repeat.items()},
            "cache_dir": None if cfg.data.cache_dir is None else _abs(cfg.data.cache_dir, cwd),
        }
    )
    update: dict[str, Any] = {
        "data": data,
        "tokenizer": cfg.tokenizer.model_copy(update={"path": fix(cfg.tokenizer.path)}),
        "model": cfg.model.model_copy(
            update={
                "checkpoint": fix(cfg.model.checkpoint),
                "init_from": None if cfg.model.init_from is None else _abs(cfg.model.init_from, cwd),  # local only
            }
        ),
    }
    if cfg.probe is not None:
        update["probe"] = cfg.probe.model_copy(update={"train": fix_list(cfg.probe.train), "validation": fix_list(cfg.probe.validation)})
    if cfg.output_dir is not None:
        update["output_dir"] = _abs(cfg.output_dir, cwd)
    return cfg.model_copy(update=update)


# ----------------------------------------------------------------------------------------------
# The entry point used by the CLI


def load_config(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    stage: Stage | None = None,
    cwd: Path | None = None,
    values: dict[str, Any] | None = None,
) -> Config:
    """Load a config file with its `extends` chain, apply `--set` overrides, validate, resolve paths.

    Args:
        path: the YAML file.
        overrides: `key.path=value` strings, applied in order.
        stage: "pretrain"/"finetune" adds the rules of that stage (required keys, sizes, limits).
        cwd: the directory relative paths resolve against (default: the working directory).
        values: top-level keys set as they are, after the overrides (the CLI's --output-dir etc.).

    Raises:
        ConfigError: listing every problem found.
    """
    raw = load_raw(path)
    for text in overrides:
        raw = apply_override(raw, text)
    raw.update(values or {})
    cfg = validate(raw, stage=stage, source=str(path))
    return resolve_paths(cfg, cwd)


def to_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML, in schema order."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=100)


def infer_stage(cfg: Config) -> Stage:
    """A config with model.checkpoint fine-tunes; one without pretrains."""
    return "finetune" if cfg.model.checkpoint else "pretrain"
