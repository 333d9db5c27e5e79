"""Hostile input: every case gives a clear message and exit code 2 (or works), and writes nothing.
Property-based tests (hypothesis) for the override parser and the data readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import invoke, tiny_config, write_config
from lmtune import data
from lmtune.config import FLOAT_PATTERN, ConfigError, load_config, parse_override
from lmtune.errors import DataError

# ----------------------------------------------------------------------------------------------
# Configs


def _pretrain(runner, tmp_path: Path, config: Path, *extra: str):
    result = invoke(runner, "pretrain", config, *extra)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "run").exists()
    return result


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- just\n- a list\n", "must hold a mapping"),
        ("42\n", "must hold a mapping"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
        ("model:\n" + "".join(f"{'  ' * (i + 1)}k{i}:\n" for i in range(80)), "nested more than 50 levels"),
        # the "billion laughs": 9 levels of 10 aliases each expand to 10^9 values
        ("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
         + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)), "expands to more than"),
        ("train:\n  lr: 1e-3\n" + "# padding\n" * 200_000, "not a plausible config"),
    ],
    ids=["list", "scalar", "deeply-nested-flow", "deeply-nested-block", "alias-bomb", "huge"],
)
def test_configs_that_are_not_configs(tmp_path, runner, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    result = _pretrain(runner, tmp_path, config)
    assert message in result.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("train..lr=3", "is not a dotted key"),
        ("train.lr=[1, 2", "not valid YAML"),
        ("train.lr=" + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("train.lr=abc", "train.lr"),
        ("train.batch_size=-3", "train.batch_size"),
    ],
)
def test_malformed_set_is_exit_2(tmp_path, runner, override, message):
    result = _pretrain(runner, tmp_path, tiny_config(tmp_path), "--set", override)
    assert message in result.stderr


# ----------------------------------------------------------------------------------------------
# Data files


@pytest.mark.slow
def test_a_50_mb_single_line_file_pretrains(tmp_path, runner):
    """One 50 MB line (no newline at all) is a single document: it is read, tokenized and packed
    into blocks, and training runs on it."""
    big = tmp_path / "one-line.txt"
    words = "the cow says moo and the dog says woof while the cat says meow "
    with open(big, "w") as handle:
        for _ in range(50 * (1 << 20) // len(words)):
            handle.write(words)
    assert big.stat().st_size > 49 * (1 << 20)
    validation = tmp_path / "validation.txt"
    validation.write_text(words * 20 + "\n")
    config = tiny_config(
        tmp_path,
        data={"train": [str(big)], "validation": [str(validation)], "txt_unit": "paragraph", "max_length": 32},
        train={"batch_size": 16, "max_steps": 2, "eval_every": None, "save_every": None},
    )
    result = invoke(runner, "pretrain", config)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data"]["train_blocks"] > 300_000  # ~13M tokens in blocks of 32
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_a_single_document_without_validation_files_is_refused(tmp_path, runner):
    one = tmp_path / "one.txt"
    one.write_text("a single paragraph of text with no blank line in it " * 50)
    config = tiny_config(tmp_path, data={"train": [str(one)], "txt_unit": "paragraph", "max_length": 32})
    result = _pretrain(runner, tmp_path, config)
    assert "data.validation" in result.stderr


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"", "is empty"),
        ("blank.txt", b"\n\n   \n\t\n", "hold no text"),
        ("binary.txt", bytes(range(256)) * 4, "looks binary"),
        ("latin1.txt", "caf\u00e9 au lait\n".encode("latin-1"), "not UTF-8"),
        ("ragged.csv", b"text,label\n\"a b\",1\n\"c d\",2,extra,columns\n", "line 3"),
        ("broken.jsonl", b'{"text": "fine"}\n{"text": "broken\n{"text": "fine"}\n', "line 2 is not valid JSON"),
    ],
)
def test_bad_training_files_are_exit_2_and_name_the_problem(tmp_path, runner, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    config = tiny_config(tmp_path, data={"train": [str(path)], "max_length": 32})
    result = _pretrain(runner, tmp_path, config)
    assert message in result.stderr, result.stderr
    assert name in result.stderr


# ----------------------------------------------------------------------------------------------
# Properties

KEY = st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), min_size=1, max_size=4)
SCALAR = st.one_of(
    st.integers(-10**12, 10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.booleans(),
    st.none(),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=30),
)


class _FloatAwareDumper(yaml.SafeDumper):
    """yaml.safe_dump, except that it quotes the strings lmtune's loader would read as floats."""


_FloatAwareDumper.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_PATTERN, list("-+0123456789."))


@example(parts=["A"], value="0E0")  # a string that looks like exponent notation stays a string
@given(parts=KEY, value=st.one_of(SCALAR, st.lists(SCALAR, max_size=4)))
@settings(max_examples=300, deadline=None)
def test_parse_override_round_trips_any_value_written_as_yaml(parts, value):
    # written by a dumper that reads floats as --set does, so it quotes a string like '0E0'
    text = yaml.dump(value, Dumper=_FloatAwareDumper, default_flow_style=True, width=10**6).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    text = text.removesuffix("...").strip()
    got_parts, got = parse_override(f"{'.'.join(parts)}={text}")
    assert got_parts == parts
    assert got == value or (value == "" and got is None)


@given(st.text(max_size=60))
@settings(max_examples=500, deadline=None)
def test_parse_override_never_fails_with_anything_but_a_config_error(text):
    try:
        parts, _ = parse_override(text)
    except ConfigError:
        return
    assert parts and all(p.isidentifier() for p in parts)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_check_text_file_accepts_exactly_utf8_without_nul(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("bytes") / "f.txt"
    path.write_bytes(content)
    try:
        content.decode("utf-8")
        valid = b"\x00" not in content
    except UnicodeDecodeError:
        valid = False
    if valid:
        data.check_text_file(path)
    else:
        with pytest.raises(DataError):
            data.check_text_file(path)


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"), min_size=0, max_size=40)


@given(texts=st.lists(TEXT, min_size=1, max_size=8))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_jsonl_reader_returns_every_non_blank_text_in_order(tmp_path_factory, texts):
    folder = tmp_path_factory.mktemp("jsonl")
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    expected = [t for t in texts if t.strip()]
    if not expected:
        with pytest.raises(DataError, match="hold no text"):
            data.load_texts([str(path)], "data.train", cache_dir=str(folder / "cache"))
        return
    dataset, _ = data.load_texts([str(path)], "data.train", cache_dir=str(folder / "cache"))
    assert dataset["text"] == expected


LINE = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp"), exclude_characters="\x85"), min_size=1, max_size=30
)


@given(lines=st.lists(LINE, min_size=1, max_size=8))
@settings(max_examples=30, deadline=None)
def test_txt_line_reader_returns_every_non_blank_line(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("txt")
    path = folder / "lines.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = [line for line in lines if line.strip()]
    if not expected:
        with pytest.raises(DataError):
            data.load_texts([str(path)], "data.train", txt_unit="line", cache_dir=str(folder / "cache"))
        return
    dataset, _ = data.load_texts([str(path)], "data.train", txt_unit="line", cache_dir=str(folder / "cache"))
    assert [t.strip() for t in dataset["text"]] == [line.strip() for line in expected]
