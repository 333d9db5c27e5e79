"""Unit tests for lmtune.config: loading, extends, --set overrides, validation, paths, YAML output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from lmtune.config import (
    Config,
    apply_override,
    deep_merge,
    infer_stage,
    load_config,
    load_raw,
    parse_override,
    resolve_paths,
    to_yaml,
    validate,
)
from lmtune.errors import ConfigError, LmtuneError

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((REPO / "configs").rglob("*.yaml"))

# the smallest config that passes the pretrain rules
VALID_PRETRAIN = {
    "output_dir": "runs/x",
    "data": {"train": ["corpus/*.txt"]},
    "train": {"max_steps": 10},
}


def write(path: Path, content: dict | list | str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return path


def problem_count(message: str) -> int:
    """How many problems a ConfigError message lists (1 when it is a single-line message)."""
    match = re.search(r"has (\d+) problems:", message)
    if not match:
        return 1
    listed = [line for line in message.splitlines() if line.startswith("  - ")]
    assert int(match.group(1)) == len(listed), message
    return len(listed)


def pretrain_error(tmp_path: Path, **sections) -> str:
    """Load VALID_PRETRAIN deep-merged with `sections` for the pretrain stage; return the error text."""
    raw = deep_merge(VALID_PRETRAIN, sections)
    path = write(tmp_path / "c.yaml", raw)
    with pytest.raises(ConfigError) as info:
        load_config(path, stage="pretrain", cwd=tmp_path)
    return str(info.value)


# ----------------------------------------------------------------------------------------------
# extends and deep merge


def test_deep_merge_merges_nested_keys_and_replaces_lists_without_mutating_inputs():
    base = {"model": {"arch": "bert", "preset": "mini"}, "data": {"train": ["a.txt", "b.txt"]}, "seed": 1}
    update = {"model": {"preset": "tiny"}, "data": {"train": ["c.txt"]}, "device": "cpu"}
    merged = deep_merge(base, update)
    assert merged == {
        "model": {"arch": "bert", "preset": "tiny"},
        "data": {"train": ["c.txt"]},
        "seed": 1,
        "device": "cpu",
    }
    assert base["model"]["preset"] == "mini" and base["data"]["train"] == ["a.txt", "b.txt"]
    assert update == {"model": {"preset": "tiny"}, "data": {"train": ["c.txt"]}, "device": "cpu"}
    merged["model"]["arch"] = "roberta"
    assert base["model"]["arch"] == "bert"  # a deep copy, not shared nested dicts


def test_extends_is_relative_to_the_file_not_the_working_directory(tmp_path, monkeypatch):
    write(tmp_path / "bases" / "base.yaml", {"seed": 7, "model": {"arch": "roberta", "preset": "small", "dropout": 0.2}})
    child = write(
        tmp_path / "sub" / "child.yaml",
        {"extends": "../bases/base.yaml", "model": {"preset": "tiny"}, "train": {"batch_size": 8}},
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(child)
    assert cfg.seed == 7
    assert cfg.model.arch == "roberta"  # from the base
    assert cfg.model.dropout == 0.2  # from the base, merged into the same section
    assert cfg.model.preset == "tiny"  # the file wins over its base
    assert cfg.train.batch_size == 8


def test_extends_chain_each_file_wins_over_its_base(tmp_path):
    write(tmp_path / "c.yaml", {"seed": 1, "device": "cpu", "train": {"lr": 0.1, "batch_size": 1}})
    write(tmp_path / "b.yaml", {"extends": "c.yaml", "seed": 2, "train": {"batch_size": 2}})
    a = write(tmp_path / "a.yaml", {"extends": "b.yaml", "train": {"grad_accum": 3}})
    raw = load_raw(a)
    assert "extends" not in raw
    assert raw == {"seed": 2, "device": "cpu", "train": {"lr": 0.1, "batch_size": 2, "grad_accum": 3}}
    cfg = load_config(a)
    assert (cfg.seed, cfg.device, cfg.train.lr, cfg.train.batch_size, cfg.train.grad_accum) == (2, "cpu", 0.1, 2, 3)


def test_extends_cycle_is_a_config_error(tmp_path):
    write(tmp_path / "a.yaml", {"extends": "b.yaml", "seed": 1})
    write(tmp_path / "b.yaml", {"extends": "a.yaml", "seed": 2})
    with pytest.raises(ConfigError, match="cycle") as info:
        load_config(tmp_path / "a.yaml")
    assert "a.yaml" in str(info.value) and "b.yaml" in str(info.value)


def test_extends_itself_is_a_cycle(tmp_path):
    write(tmp_path / "self.yaml", {"extends": "self.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "self.yaml")


def test_extends_missing_base_names_the_file(tmp_path):
    path = write(tmp_path / "a.yaml", {"extends": "nope.yaml"})
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(path)


def test_extends_must_be_a_file_name(tmp_path):
    path = write(tmp_path / "a.yaml", {"extends": ["b.yaml"]})
    with pytest.raises(ConfigError, match="extends"):
        load_config(path)


# ----------------------------------------------------------------------------------------------
# --set overrides


def test_override_float_in_exponent_notation_is_parsed_as_a_number():
    # DESIGN.md: "--set parses the value as YAML (--set train.lr=3e-4)". PyYAML's YAML 1.1 resolver
    # reads "3e-4" as a string; the value must still arrive as a number.
    parts, value = parse_override("train.lr=3e-4")
    assert parts == ["train", "lr"]
    assert isinstance(value, float) and value == pytest.approx(3e-4)


def test_override_lr_in_exponent_notation_reaches_the_config_as_float(tmp_path):
    path = write(tmp_path / "c.yaml", {"train": {"lr": 0.1}})
    cfg = load_config(path, ["train.lr=3e-4"])
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == pytest.approx(3e-4)


def test_override_exponent_float_into_hf_config_stays_a_number(tmp_path):
    # hf_config is passed as-is to BertConfig, which rejects a str layer_norm_eps at model build time
    path = write(tmp_path / "c.yaml", VALID_PRETRAIN)
    cfg = load_config(path, ["model.hf_config.layer_norm_eps=1e-12"], stage="pretrain", cwd=tmp_path)
    value = cfg.model.hf_config["layer_norm_eps"]
    assert isinstance(value, float) and value == pytest.approx(1e-12)


@pytest.mark.parametrize(
    ("text", "parts", "value"),
    [
        ("train.lr=0.5", ["train", "lr"], 0.5),
        ("train.batch_size=16", ["train", "batch_size"], 16),
        ("data.train=[a.txt,b.txt]", ["data", "train"], ["a.txt", "b.txt"]),
        ("mlm.whole_word=true", ["mlm", "whole_word"], True),
        ("train.epochs=null", ["train", "epochs"], None),
        ("train.epochs=", ["train", "epochs"], None),
        ("output_dir=runs/a=b", ["output_dir"], "runs/a=b"),  # only the first = splits
        ("model.hf_config={a: 1}", ["model", "hf_config"], {"a": 1}),
        (" seed = 3", ["seed"], 3),
    ],
)
def test_parse_override_parses_the_value_as_yaml(text, parts, value):
    got_parts, got_value = parse_override(text)
    assert got_parts == parts
    assert got_value == value and type(got_value) is type(value)


@pytest.mark.parametrize("text", ["novalue", "=3", "a..b=1", ".a=1", "a.=1", "train.lr=[unclosed", "1abc=2", "a-b=1"])
def test_malformed_override_is_a_config_error(text):
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    assert "--set" in str(info.value) and text in str(info.value)


def test_malformed_override_through_load_config(tmp_path):
    path = write(tmp_path / "c.yaml", {})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, ["novalue"])


def test_apply_override_creates_nested_sections_and_copies():
    raw = {"seed": 1}
    out = apply_override(raw, "model.hf_config.layer_norm_eps=0.5")
    assert out == {"seed": 1, "model": {"hf_config": {"layer_norm_eps": 0.5}}}
    assert raw == {"seed": 1}
    # a section set to null in the file becomes a mapping
    assert apply_override({"model": None}, "model.preset=tiny") == {"model": {"preset": "tiny"}}


def test_apply_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="seed"):
        apply_override({"seed": 1}, "seed.x=2")


def test_overrides_win_over_the_file_and_apply_in_order(tmp_path):
    path = write(tmp_path / "c.yaml", {"seed": 1, "train": {"batch_size": 4, "lr": 0.1}})
    cfg = load_config(path, ["train.batch_size=8", "seed=5", "train.batch_size=16", "model.preset=tiny"])
    assert cfg.train.batch_size == 16
    assert cfg.seed == 5
    assert cfg.train.lr == 0.1  # untouched keys of the section survive
    assert cfg.model.preset == "tiny"


def test_override_list_of_files_resolves_each(tmp_path):
    path = write(tmp_path / "c.yaml", VALID_PRETRAIN)
    cfg = load_config(path, ["data.train=[a.txt,b.txt]"], stage="pretrain", cwd=tmp_path)
    assert cfg.data.train == [str(tmp_path.resolve() / "a.txt"), str(tmp_path.resolve() / "b.txt")]


def test_values_win_over_overrides(tmp_path):
    path = write(tmp_path / "c.yaml", {"data": {"train": ["a.txt"]}, "train": {"max_steps": 1}})
    cfg = load_config(path, ["output_dir=from-set"], stage="pretrain", cwd=tmp_path, values={"output_dir": "from-flag"})
    assert cfg.output_dir == str(tmp_path.resolve() / "from-flag")


# ----------------------------------------------------------------------------------------------
# Schema errors


def test_unknown_key_suggests_the_close_one(tmp_path):
    path = write(tmp_path / "c.yaml", {"train": {"lr": 0.1}})
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.lrr=0.1"])
    message = str(info.value)
    assert "train.lrr" in message
    assert "Did you mean 'train.lr'?" in message
    assert "batch_size" in message  # lists the valid keys of the section
    assert str(path) in message


def test_unknown_top_level_key_suggests_the_close_one(tmp_path):
    path = write(tmp_path / "c.yaml", {"seeed": 1})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "Did you mean 'seed'?" in str(info.value)
    assert "output_dir" in str(info.value)


def test_unknown_key_without_a_close_match_has_no_suggestion(tmp_path):
    path = write(tmp_path / "c.yaml", {"model": {"zzzzqqqq": 1}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "model.zzzzqqqq" in str(info.value)
    assert "Did you mean" not in str(info.value)


def test_several_schema_problems_are_reported_together(tmp_path):
    path = write(
        tmp_path / "c.yaml",
        {"seed": "abc", "train": {"lrr": 0.1, "batch_size": 0}, "model": {"arch": "gpt"}, "precision": "int8"},
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert problem_count(message) == 5
    for key in ("seed", "train.lrr", "train.batch_size", "model.arch", "precision"):
        assert key in message


def test_several_cross_field_problems_are_reported_together(tmp_path):
    path = write(
        tmp_path / "c.yaml",
        {
            "train": {"warmup": 0.1, "warmup_steps": 10},
            "mlm": {"mask_replace": 0.95, "random_replace": 0.1},
            "tokenizer": {"vocab_size": 10},
        },
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, stage="pretrain")
    message = str(info.value)
    # warmup, mlm shares, output_dir, data.train empty, nothing bounds the run, vocab size
    assert problem_count(message) == 6, message
    for fragment in ("warmup_steps", "mask_replace", "output_dir", "data.train", "nothing bounds", "vocab_size"):
        assert fragment in message


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:12", "mps"])
def test_valid_device_syntax(tmp_path, device):
    path = write(tmp_path / "c.yaml", {"device": device})
    assert load_config(path).device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "cuda0", "cuda:1:2", "", "tpu"])
def test_invalid_device_syntax(tmp_path, device):
    path = write(tmp_path / "c.yaml", {"device": device})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "device" in str(info.value)
    assert "cuda:N" in str(info.value)


# ----------------------------------------------------------------------------------------------
# Cross-field rules


def test_valid_pretrain_config_passes(tmp_path):
    path = write(tmp_path / "c.yaml", VALID_PRETRAIN)
    cfg = load_config(path, stage="pretrain", cwd=tmp_path)
    assert isinstance(cfg, Config)
    assert cfg.train.max_steps == 10


def test_hidden_size_not_divisible_by_heads(tmp_path):
    message = pretrain_error(tmp_path, model={"hidden_size": 250})  # mini has 4 heads
    assert "hidden_size=250" in message and "num_attention_heads=4" in message
    # divisible works
    path = write(tmp_path / "ok.yaml", deep_merge(VALID_PRETRAIN, {"model": {"hidden_size": 260}}))
    assert load_config(path, stage="pretrain", cwd=tmp_path).model.hidden_size == 260


def test_max_length_above_bert_position_limit(tmp_path):
    message = pretrain_error(tmp_path, data={"max_length": 513})
    assert "data.max_length=513" in message and "512" in message
    path = write(tmp_path / "ok.yaml", deep_merge(VALID_PRETRAIN, {"data": {"max_length": 512}}))
    assert load_config(path, stage="pretrain", cwd=tmp_path).data.max_length == 512
    bigger = deep_merge(VALID_PRETRAIN, {"data": {"max_length": 1024}, "model": {"max_position_embeddings": 1024}})
    path = write(tmp_path / "ok2.yaml", bigger)
    assert load_config(path, stage="pretrain", cwd=tmp_path).data.max_length == 1024


def test_roberta_limit_is_512_with_default_positions(tmp_path):
    message = pretrain_error(tmp_path, model={"arch": "roberta"}, data={"max_length": 513})
    assert "data.max_length=513" in message and "limit of 512" in message
    ok = deep_merge(VALID_PRETRAIN, {"model": {"arch": "roberta"}, "data": {"max_length": 512}})
    assert load_config(write(tmp_path / "ok.yaml", ok), stage="pretrain", cwd=tmp_path).data.max_length == 512
    # explicit positions: RoBERTa loses 2 to its offset
    message = pretrain_error(tmp_path, model={"arch": "roberta", "max_position_embeddings": 130}, data={"max_length": 129})
    assert "limit of 128" in message


def test_vocab_size_below_64_when_training_a_tokenizer(tmp_path):
    message = pretrain_error(tmp_path, tokenizer={"vocab_size": 63})
    assert "tokenizer.vocab_size=63" in message and "64" in message
    ok = deep_merge(VALID_PRETRAIN, {"tokenizer": {"vocab_size": 64}})
    assert load_config(write(tmp_path / "ok.yaml", ok), stage="pretrain", cwd=tmp_path).tokenizer.vocab_size == 64
    # a reused tokenizer decides its own vocabulary
    reuse = deep_merge(VALID_PRETRAIN, {"tokenizer": {"vocab_size": 10, "path": "tok"}})
    assert load_config(write(tmp_path / "ok2.yaml", reuse), stage="pretrain", cwd=tmp_path).tokenizer.vocab_size == 10


@pytest.mark.parametrize("bound", [{"epochs": 1}, {"max_steps": 5}, {"max_minutes": 0.5}])
def test_nothing_bounds_the_run(tmp_path, bound):
    raw = {"output_dir": "runs/x", "data": {"train": ["a.txt"]}}
    with pytest.raises(ConfigError, match="nothing bounds the run"):
        load_config(write(tmp_path / "c.yaml", raw), stage="pretrain", cwd=tmp_path)
    cfg = load_config(write(tmp_path / "c2.yaml", {**raw, "train": bound}), stage="pretrain", cwd=tmp_path)
    assert cfg.output_dir == str(tmp_path.resolve() / "runs/x")


def test_output_dir_required_for_pretrain_only(tmp_path):
    raw = {"data": {"train": ["a.txt"]}, "train": {"max_steps": 1}}
    path = write(tmp_path / "c.yaml", raw)
    with pytest.raises(ConfigError) as info:
        load_config(path, stage="pretrain", cwd=tmp_path)
    assert "output_dir is required" in str(info.value)
    assert problem_count(str(info.value)) == 1
    assert load_config(path, cwd=tmp_path).output_dir is None  # no stage: `config show` needs no output_dir


def test_warmup_and_warmup_steps_both_set(tmp_path):
    path = write(tmp_path / "c.yaml", {"train": {"warmup": 0.1, "warmup_steps": 100}})
    with pytest.raises(ConfigError, match="train.warmup and train.warmup_steps"):
        load_config(path)  # a stage-free rule
    assert load_config(write(tmp_path / "ok.yaml", {"train": {"warmup_steps": 100}})).train.warmup_steps == 100


def test_mask_and_random_replace_shares_above_one(tmp_path):
    path = write(tmp_path / "c.yaml", {"mlm": {"mask_replace": 0.8, "random_replace": 0.3}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "mlm.mask_replace + mlm.random_replace" in str(info.value) and "1.1" in str(info.value)
    ok = write(tmp_path / "ok.yaml", {"mlm": {"mask_replace": 0.9, "random_replace": 0.1}})
    assert load_config(ok).mlm.random_replace == 0.1


def test_hf_config_unknown_key_suggests_the_close_one(tmp_path):
    message = pretrain_error(tmp_path, model={"hf_config": {"layer_norm_epss": 1.0e-5}})
    assert "model.hf_config.layer_norm_epss" in message
    assert "Did you mean 'layer_norm_eps'?" in message
    assert "BertConfig" in message


def test_hf_config_known_key_passes_and_roberta_is_checked_against_its_config(tmp_path):
    ok = deep_merge(VALID_PRETRAIN, {"model": {"hf_config": {"layer_norm_eps": 1.0e-5, "hidden_act": "gelu_new"}}})
    cfg = load_config(write(tmp_path / "ok.yaml", ok), stage="pretrain", cwd=tmp_path)
    assert cfg.model.hf_config == {"layer_norm_eps": 1.0e-5, "hidden_act": "gelu_new"}
    message = pretrain_error(tmp_path, model={"arch": "roberta", "hf_config": {"nope_field": 1}})
    assert "RobertaConfig" in message


@pytest.mark.parametrize("key", ["hidden_size", "vocab_size", "pad_token_id"])
def test_hf_config_keys_owned_elsewhere_are_rejected(tmp_path, key):
    message = pretrain_error(tmp_path, model={"hf_config": {key: 64}})
    assert f"model.hf_config.{key}" in message


def test_pretrain_rejects_a_checkpoint(tmp_path):
    message = pretrain_error(tmp_path, model={"checkpoint": "runs/mini/final"})
    assert "model.checkpoint" in message


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"model": {"init_from": "runs/base/final", "hidden_size": 64}}, "model.hidden_size sizes a new model"),
        ({"model": {"init_from": "runs/base/final", "max_position_embeddings": 1024}}, "model.max_position_embeddings"),
        ({"model": {"init_from": "runs/base/final", "hf_config": {"rope_theta": 1.0}}}, "model.hf_config shapes a new model"),
        ({"model": {"init_from": "runs/base/final"}, "tokenizer": {"path": "tok"}}, "brings the tokenizer"),
        ({"model": {"init_from": "runs/base/final"}, "mlm": {"objective": "electra"}}, "mlm.objective=electra"),
    ],
)
def test_init_from_refuses_what_would_shape_a_new_model(tmp_path, extra, message):
    assert message in pretrain_error(tmp_path, **extra)


def test_init_from_keeps_the_checkpoints_sizes_and_resolves_against_cwd(tmp_path):
    # the preset and arch a base config sets are not used, a null preset needs no sizes, and the
    # position limit is the checkpoint's (checked when it loads), not the preset's
    path = write(
        tmp_path / "c.yaml",
        {
            "output_dir": "out",
            "model": {"arch": "modernbert", "preset": None, "init_from": "runs/base/final"},
            "data": {"train": ["a.txt"], "max_length": 1024},
            "train": {"max_steps": 1},
        },
    )
    cfg = load_config(path, stage="pretrain", cwd=tmp_path)
    assert cfg.model.init_from == str(tmp_path.resolve() / "runs" / "base" / "final")


def test_finetune_rejects_init_from(tmp_path):
    path = write(
        tmp_path / "c.yaml",
        {"output_dir": "out", "model": {"checkpoint": "ckpt", "init_from": "runs/base/final"}, "data": {"train": ["a.jsonl"]}, "train": {"epochs": 1}},
    )
    with pytest.raises(ConfigError, match="model.init_from='runs/base/final' continues pretraining"):
        load_config(path, stage="finetune", cwd=tmp_path)


def test_null_preset_needs_every_size(tmp_path):
    message = pretrain_error(tmp_path, model={"preset": None, "hidden_size": 64})
    for key in ("num_hidden_layers", "num_attention_heads", "intermediate_size"):
        assert f"model.{key}" in message
    assert "model.hidden_size" not in message


# ----------------------------------------------------------------------------------------------
# Reading files


def test_config_that_is_a_list_is_rejected(tmp_path):
    path = write(tmp_path / "c.yaml", "- seed: 1\n- device: cpu\n")
    with pytest.raises(ConfigError, match="mapping") as info:
        load_config(path)
    assert "list" in str(info.value) and str(path) in str(info.value)


def test_config_that_is_a_scalar_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path / "c.yaml", "just text\n"))


def test_invalid_yaml(tmp_path):
    path = write(tmp_path / "c.yaml", "train: {lr: [1, 2\nseed: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(tmp_path / "missing.yaml")
    assert "missing.yaml" in str(info.value)


def test_directory_instead_of_a_file(tmp_path):
    with pytest.raises(ConfigError):
        load_config(tmp_path)


def test_non_utf8_file(tmp_path):
    path = write(tmp_path / "c.yaml", "seed: 1\n# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


def test_empty_file_gives_the_defaults(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", ""), cwd=tmp_path)
    assert cfg == Config()


def test_config_errors_are_lmtune_errors():
    assert issubclass(ConfigError, LmtuneError)


# ----------------------------------------------------------------------------------------------
# Paths


def test_relative_paths_resolve_against_the_given_cwd(tmp_path, monkeypatch):
    work = (tmp_path / "work").resolve()
    work.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    absolute = str(tmp_path.resolve() / "abs" / "x.txt")
    path = write(
        tmp_path / "cfgs" / "c.yaml",
        {
            "output_dir": "runs/x",
            "tokenizer": {"path": "./tok"},
            "data": {
                "train": ["corpus/*.txt", "more/a.txt", absolute, "../up/b.jsonl"],
                "validation": "val.jsonl",
                "test": ["sub/dir/test.csv"],
                "cache_dir": "cache",
            },
            "train": {"max_steps": 1},
        },
    )
    cfg = load_config(path, stage="pretrain", cwd=work)
    glob_entry, file_entry, abs_entry, up_entry = cfg.data.train
    assert glob_entry == str(work / "corpus/*.txt")  # still a glob, but absolute
    assert "*" in glob_entry and Path(glob_entry).is_absolute()
    assert file_entry == str(work / "more" / "a.txt")
    assert abs_entry == absolute
    assert up_entry == str(tmp_path.resolve() / "up" / "b.jsonl")
    assert cfg.data.validation == [str(work / "val.jsonl")]
    assert cfg.data.test == [str(work / "sub" / "dir" / "test.csv")]
    assert cfg.data.cache_dir == str(work / "cache")
    assert cfg.output_dir == str(work / "runs" / "x")
    assert cfg.tokenizer.path == str(work / "tok")


def test_relative_paths_default_to_the_process_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "c.yaml", {"output_dir": "out", "data": {"train": ["a.txt"]}})
    cfg = load_config(path)
    assert cfg.output_dir == str(tmp_path.resolve() / "out")
    assert cfg.data.train == [str(tmp_path.resolve() / "a.txt")]


def test_existing_directory_without_a_slash_resolves_against_the_given_cwd(tmp_path, monkeypatch):
    # `data.train: [corpus]` where corpus/ is a directory under cwd is a local path, not a hub name
    work = (tmp_path / "work").resolve()
    (work / "corpus").mkdir(parents=True)
    (work / "corpus" / "a.txt").write_text("hello\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(tmp_path / "c.yaml", {"data": {"train": ["corpus"]}})
    cfg = load_config(path, cwd=work)
    assert cfg.data.train == [str(work / "corpus")]


def test_hub_like_names_are_left_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(
        tmp_path / "c.yaml",
        {"data": {"train": ["imdb", "org/name"], "validation": ["stanfordnlp/sst2"]}, "model": {"checkpoint": "bert-base-uncased"}},
    )
    cfg = load_config(path, cwd=tmp_path)
    assert cfg.data.train == ["imdb", "org/name"]
    assert cfg.data.validation == ["stanfordnlp/sst2"]
    assert cfg.model.checkpoint == "bert-base-uncased"


def test_resolve_paths_is_idempotent(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", VALID_PRETRAIN), stage="pretrain", cwd=tmp_path)
    assert resolve_paths(cfg, tmp_path / "other") == cfg


# ----------------------------------------------------------------------------------------------
# YAML output and stage


def test_to_yaml_round_trips(tmp_path):
    raw = deep_merge(
        VALID_PRETRAIN,
        {
            "seed": 3,
            "device": "cuda:1",
            "precision": "bf16",
            "model": {"arch": "roberta", "preset": "tiny", "dropout": 0.1, "hf_config": {"layer_norm_eps": 1.0e-12}},
            "tokenizer": {"vocab_size": 1000, "lowercase": False},
            "data": {"train": ["corpus/*.txt", "imdb"], "validation": "val.txt", "max_length": 64},
            "mlm": {"whole_word": True, "probability": 0.2},
            "train": {"lr": 3.0e-4, "adam_eps": 1.0e-8, "warmup_steps": 10, "max_grad_norm": None},
        },
    )
    cfg = load_config(write(tmp_path / "c.yaml", raw), stage="pretrain", cwd=tmp_path)
    text = to_yaml(cfg)
    parsed = yaml.safe_load(text)
    assert list(parsed)[:4] == ["output_dir", "seed", "device", "precision"]  # schema order
    assert parsed["train"]["adam_eps"] == 1.0e-8 and isinstance(parsed["train"]["adam_eps"], float)
    again = load_config(write(tmp_path / "printed.yaml", text), stage="pretrain", cwd=tmp_path / "other")
    assert again == cfg
    assert to_yaml(again) == text


def test_to_yaml_of_defaults_round_trips(tmp_path):
    cfg = Config()
    again = validate(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg


def test_infer_stage(tmp_path):
    assert infer_stage(Config()) == "pretrain"
    assert infer_stage(validate({"model": {"checkpoint": "runs/mini/final"}})) == "finetune"


# ----------------------------------------------------------------------------------------------
# The shipped configs


def test_configs_are_shipped():
    assert CONFIG_FILES, "no YAML files under configs/"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[str(p.relative_to(REPO)) for p in CONFIG_FILES])
def test_shipped_config_validates(path, tmp_path):
    stage = infer_stage(load_config(path, cwd=tmp_path))
    cfg = load_config(path, stage=stage, cwd=tmp_path)
    assert cfg.output_dir is not None and Path(cfg.output_dir).is_absolute()
    assert cfg.data.train


# ----------------------------------------------------------------------------------------------
# data.repeat


def test_repeat_keys_resolve_like_the_train_entries_they_name(tmp_path):
    path = write(tmp_path / "c.yaml", deep_merge(VALID_PRETRAIN, {"data": {"train": ["corpus/*.txt", "task.jsonl"]}}))
    cfg = load_config(path, ["data.repeat={task.jsonl: 3}"], stage="pretrain", cwd=tmp_path)
    assert cfg.data.repeat == {str(tmp_path.resolve() / "task.jsonl"): 3}
    assert str(tmp_path.resolve() / "task.jsonl") in cfg.data.train


def test_repeat_of_an_entry_not_in_train_names_it(tmp_path):
    message = pretrain_error(tmp_path, data={"repeat": {"other.jsonl": 2}})
    assert "'other.jsonl'" in message and "data.train does not list" in message


def test_repeat_below_one_is_a_schema_error(tmp_path):
    message = pretrain_error(tmp_path, data={"repeat": {"corpus/*.txt": 0}})
    assert "data.repeat" in message and "greater than or equal to 1" in message


def test_repeat_is_refused_for_finetune(tmp_path):
    raw = {"output_dir": "runs/x", "model": {"checkpoint": "ckpt"}, "train": {"epochs": 1},
           "data": {"train": ["t.jsonl"], "repeat": {"t.jsonl": 2}}}
    with pytest.raises(ConfigError, match="data.repeat weights pretraining text"):
        load_config(write(tmp_path / "c.yaml", raw), stage="finetune", cwd=tmp_path)


def test_unknown_key_in_a_section_that_may_be_null_suggests_from_that_section(tmp_path):
    path = write(tmp_path / "c.yaml", {"probe": {"train": ["a.jsonl"], "max_row": 5}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "Did you mean 'probe.max_rows'?" in message
    assert "Valid keys here: train, validation, text_column, label_column, max_rows" in message


@pytest.mark.parametrize(("value", "fragment"), [(0, "greater than or equal to 1"), (-5, "greater than or equal to 1"), ("often", "a valid integer")])
def test_a_bad_value_for_a_union_key_is_one_problem_under_its_own_name(tmp_path, value, fragment):
    path = write(tmp_path / "c.yaml", {"train": {"eval_every": value}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert problem_count(message) == 1, message
    assert f"train.eval_every: Input should be {fragment}" in message
    assert "or input should be 'epoch'" in message
    assert "constrained-int" not in message and "literal[" not in message


def test_a_home_relative_glob_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = write(tmp_path / "c.yaml", {"data": {"train": ["~/corpus/*.txt", "~/one.txt"]}})
    glob_entry, file_entry = load_config(path, cwd=tmp_path / "elsewhere").data.train
    assert glob_entry == str(Path.home() / "corpus" / "*.txt")
    assert file_entry == str((Path.home() / "one.txt").resolve())


@pytest.mark.parametrize(("model", "fragment"), [({"hf_config": {"hidden_act": "gelu"}}, "model.hf_config"), ({"hidden_size": 64}, "model.hidden_size")])
def test_finetune_refuses_model_settings_it_would_ignore(tmp_path, model, fragment):
    path = write(tmp_path / "c.yaml", {"output_dir": "out", "model": {"checkpoint": "ckpt", **model},
                                       "data": {"train": ["a.jsonl"]}, "train": {"max_steps": 1}})
    with pytest.raises(ConfigError, match=f"{re.escape(fragment)} .*finetune keeps the checkpoint's"):
        load_config(path, stage="finetune")


def test_max_windows_is_refused_where_it_would_be_ignored(tmp_path):
    message = pretrain_error(tmp_path, data={"max_windows": 4})
    assert "data.max_windows reads long texts in fine-tuning" in message
    raw = {"output_dir": "runs/x", "model": {"checkpoint": "ckpt"}, "train": {"epochs": 1},
           "data": {"train": ["t.csv"], "text_pair_column": "second", "max_windows": 4}}
    with pytest.raises(ConfigError, match=r"a pair task \(data.text_pair_column\) cuts at data.max_length"):
        load_config(write(tmp_path / "c.yaml", raw), stage="finetune", cwd=tmp_path)
    raw["data"].pop("text_pair_column")
    assert load_config(write(tmp_path / "c.yaml", raw), stage="finetune", cwd=tmp_path).data.max_windows == 4
