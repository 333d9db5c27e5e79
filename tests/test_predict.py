"""stages/predict.py: loading classifiers, reading inputs, and batched prediction in input order.

The fixtures are tiny randomly initialised BERT classifiers (2 layers, width 32) with a WordPiece
tokenizer over a fixed vocabulary, saved with `save_pretrained`: no network, a few hundred milliseconds.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pytest
import torch
from tokenizers import models
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, pipeline

from conftest import invoke
from lmtune.errors import ConfigError, DataError, DeviceError
from lmtune.stages.predict import MULTI_LABEL, REGRESSION, SINGLE_LABEL, load_classifier, predict, quantize_int8, read_inputs
from lmtune.tokenization import BERT_SPECIALS, _wordpiece, wrap

CPU = torch.device("cpu")
SENTENCES = [
    "the cat sat on the mat",
    "dogs bark loudly at night",
    "a good movie with great acting and a lovely score",
    "terrible plot and bad acting",
    "the weather was cold and grey all week",
    "she reads a book every evening by the fire",
    "great food but slow service",
    "the train was late again this morning",
]
# deliberately not in length order, with a duplicate, an empty text and one far beyond the position table
TEXTS = [
    "a good movie with great acting and a lovely score, the cat liked it too",
    "bad",
    "the cat sat on the mat",
    "dogs bark " * 60,
    "great food but slow service",
    "",
    "the weather was cold",
    "bad",
    "she reads a book every evening by the fire and the dogs bark loudly at night",
    "terrible plot",
]
TINY = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
MAX_POSITIONS = 64  # small, so the longest text must be truncated to fit


def _save_classifier(path: Path, tokenizer, **config) -> Path:
    torch.manual_seed(0)
    cfg = BertConfig(
        **TINY,
        max_position_embeddings=MAX_POSITIONS,
        initializer_range=0.2,  # larger random weights than BERT's 0.02: texts get clearly different scores
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )
    model = BertForSequenceClassification(cfg).eval()
    if cfg.num_labels == 2:
        _centre(model, tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _centre(model: BertForSequenceClassification, tokenizer) -> None:
    """Scale the head so that the "pos" margins of TEXTS span 6 logits, then shift the "pos" bias
    so that about half of them are "pos", none of them near a tie.

    Scaling keeps the texts' order: texts the encoder cannot tell apart still score alike.
    """
    with torch.no_grad():
        batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=MAX_POSITIONS, return_tensors="pt")
        logits = model(**batch).logits  # (N, 2)
        margins = logits[:, 1] - logits[:, 0]
        scale = 6.0 / float(margins.max() - margins.min())
        model.classifier.weight *= scale
        model.classifier.bias *= scale
        margins = sorted(set((margins * scale).tolist()))  # distinct "pos" margins
        k = len(margins) // 2
        model.classifier.bias[1] -= (margins[k - 1] + margins[k]) / 2  # halfway between the middle two


@pytest.fixture(scope="module")
def tokenizer():
    """lmtune's WordPiece tokenizer over a fixed vocabulary: every word of SENTENCES and TEXTS, and
    the letters. A trained vocabulary would differ from run to run (the WordPiece trainer breaks
    ties between equally frequent merges in hash order), and with it every score."""
    words = sorted({w for t in SENTENCES + TEXTS for w in re.findall(r"\w+", t)})
    letters = sorted({c for w in words for c in w})
    vocab = list(BERT_SPECIALS.values()) + [",", "."] + letters + [f"##{c}" for c in letters] + words
    tok, _ = _wordpiece(lowercase=True)
    tok.model = models.WordPiece({piece: i for i, piece in enumerate(vocab)}, unk_token="[UNK]")
    assert len(vocab) <= TINY["vocab_size"]
    return wrap(tok, "bert", 512)


@pytest.fixture(scope="module")
def single_dir(tmp_path_factory, tokenizer) -> Path:
    return _save_classifier(
        tmp_path_factory.mktemp("single") / "final",
        tokenizer,
        num_labels=2,
        id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1},
    )


@pytest.fixture(scope="module")
def single(single_dir):
    return load_classifier(str(single_dir), CPU)


# ----------------------------------------------------------------------------------------------
# predict


def test_batched_results_in_input_order_match_one_at_a_time(single):
    model, tok, info = single
    batched = predict(model, tok, info, TEXTS, batch_size=3, all_scores=True)
    alone = [predict(model, tok, info, [t], batch_size=1, all_scores=True)[0] for t in TEXTS]
    assert [r["text"] for r in batched] == TEXTS
    for b, a in zip(batched, alone):
        assert b["label"] == a["label"]
        for name in ("neg", "pos"):
            assert b["scores"][name] == pytest.approx(a["scores"][name], abs=1e-5)
    # the comparison means something only if the texts score differently
    pos = [r["scores"]["pos"] for r in batched]
    assert max(pos) - min(pos) > 0.2
    assert {r["label"] for r in batched} == {"neg", "pos"}
    assert batched[7]["scores"]["pos"] == pytest.approx(batched[1]["scores"]["pos"], abs=1e-5)  # the duplicate "bad"


def test_single_label_names_and_scores(single):
    model, tok, info = single
    assert info.problem_type == SINGLE_LABEL
    assert info.id2label == {0: "neg", 1: "pos"}
    assert info.max_length == MAX_POSITIONS  # the tokenizer allows 512; the position table wins
    results = predict(model, tok, info, TEXTS, batch_size=4, all_scores=True)
    for r in results:
        assert set(r) == {"text", "label", "score", "scores"}
        assert r["label"] in {"neg", "pos"}
        assert math.fsum(r["scores"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["score"] == max(r["scores"].values()) == r["scores"][r["label"]]
    plain = predict(model, tok, info, TEXTS[:3])
    assert all(set(r) == {"text", "label", "score"} for r in plain)
    json.dumps(results)  # plain Python values: the CLI prints them as JSON lines


def test_agrees_with_transformers_pipeline(single_dir, single):
    model, tok, info = single
    texts = [t for t in TEXTS if t and len(t) < 100]
    classifier = pipeline("text-classification", model=str(single_dir), device="cpu")
    theirs = classifier(texts)
    ours = predict(model, tok, info, texts, batch_size=2)
    assert [r["label"] for r in ours] == [t["label"] for t in theirs]
    assert [r["score"] for r in ours] == pytest.approx([t["score"] for t in theirs], abs=1e-5)


def test_max_length_truncates(single):
    model, tok, info = single
    long_text = TEXTS[0]
    assert len(tok(long_text)["input_ids"]) > 8
    truncated = predict(model, tok, info, [long_text, "bad"], max_length=8, all_scores=True)[0]
    with torch.inference_mode():
        logits = model(**tok([long_text], truncation=True, max_length=8, return_tensors="pt")).logits
    assert truncated["scores"]["pos"] == pytest.approx(torch.softmax(logits, -1)[0, 1].item(), abs=1e-5)
    full = predict(model, tok, info, [long_text], all_scores=True)[0]
    assert abs(full["scores"]["pos"] - truncated["scores"]["pos"]) > 1e-4  # the limit changed the input


def test_bf16_autocast_close_to_fp32(single):
    model, tok, info = single
    fp32 = predict(model, tok, info, TEXTS, all_scores=True)
    bf16 = predict(model, tok, info, TEXTS, all_scores=True, precision="bf16")
    assert [r["scores"]["pos"] for r in bf16] == pytest.approx([r["scores"]["pos"] for r in fp32], abs=0.05)
    assert next(model.parameters()).dtype == torch.float32  # autocast leaves the weights alone


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cli_auto_precision_is_bf16_only_where_the_cpu_computes_it(single, single_dir, runner, monkeypatch, native_bf16):
    """`lmtune predict` with no --precision autocasts to bf16 on a CPU with native bf16, as training
    does, and stays fp32 elsewhere (where bf16 would be emulated and slow)."""
    from lmtune import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native_bf16)
    model, tok, info = single
    result = invoke(runner, "predict", single_dir, *TEXTS, "--all-scores", "--device", "cpu")
    assert result.exit_code == 0, result.output
    got = [json.loads(line)["scores"]["pos"] for line in result.stdout.splitlines()]
    fp32 = [r["scores"]["pos"] for r in predict(model, tok, info, TEXTS, all_scores=True)]
    bf16 = [r["scores"]["pos"] for r in predict(model, tok, info, TEXTS, all_scores=True, precision="bf16")]
    assert bf16 != pytest.approx(fp32, abs=1e-6)  # the two precisions are told apart
    assert got == pytest.approx(bf16 if native_bf16 else fp32, abs=1e-6)


def test_bf16_computes_the_last_layer_in_fp32(tmp_path, tokenizer):
    """Under autocast the encoder runs in bf16 but the head does not: a regression output keeps fp32's
    resolution instead of landing on bf16's grid of 3 significant digits."""
    path = _save_classifier(tmp_path / "reg", tokenizer, num_labels=1, problem_type=REGRESSION)
    model, tok, info = load_classifier(str(path), CPU)
    scores = torch.tensor([r["score"] for r in predict(model, tok, info, TEXTS, precision="bf16")])
    on_bf16_grid = scores == scores.to(torch.bfloat16).float()
    assert on_bf16_grid.sum() <= 1  # a bf16 head would put every one of the 10 on the grid
    fp32 = torch.tensor([r["score"] for r in predict(model, tok, info, TEXTS)])
    assert scores.tolist() == pytest.approx(fp32.tolist(), abs=0.05)
    assert "forward" not in vars(model.classifier)  # the head is itself again afterwards


def test_int8_quantises_the_encoder_and_stays_close_to_fp32(single):
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    model, tok, info = single
    int8 = quantize_int8(model)
    linear = {name: type(m) for name, m in int8.named_modules() if isinstance(m, (torch.nn.Linear, Int8Linear))}
    assert linear.pop("classifier") is torch.nn.Linear  # the head stays fp32
    assert linear and all(kind is Int8Linear for kind in linear.values())  # query/key/value, FFN, pooler
    assert type(model.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear  # a copy: the model is unchanged
    fp32 = predict(model, tok, info, TEXTS, all_scores=True)
    fast = predict(int8, tok, info, TEXTS, all_scores=True)
    pos32, pos8 = [r["scores"]["pos"] for r in fp32], [r["scores"]["pos"] for r in fast]
    assert pos8 == pytest.approx(pos32, abs=0.1)  # the head spreads the margins over 6 logits: a broken model would be far off
    assert pos8 != pytest.approx(pos32, abs=1e-6)  # int8 really ran: its rounding shows


def test_int8_refuses_a_model_off_the_cpu(single):
    model, _, _ = single
    meta = BertForSequenceClassification(BertConfig(**TINY)).to("meta")
    with pytest.raises(DeviceError, match="CPU only"):
        quantize_int8(meta)
    assert next(model.parameters()).device.type == "cpu"


def test_cli_precision_is_checked(single_dir, runner):
    result = invoke(runner, "predict", single_dir, "a text", "--precision", "fp8")
    assert result.exit_code == 2
    assert "--precision fp8 is not one of auto | fp32 | bf16 | fp16 | int8" in result.output
    result = invoke(runner, "predict", single_dir, "a text", "bad", "--precision", "int8")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["text"] for line in result.stdout.splitlines()] == ["a text", "bad"]


def test_bad_arguments_are_config_errors(single):
    model, tok, info = single
    with pytest.raises(ConfigError, match="batch_size=0"):
        predict(model, tok, info, ["x"], batch_size=0)
    with pytest.raises(ConfigError, match="max_length=100 .* 64"):
        predict(model, tok, info, ["x"], max_length=100)
    with pytest.raises(ConfigError, match="precision='fp8'"):
        predict(model, tok, info, ["x"], precision="fp8")


def test_multi_label_head(tmp_path, tokenizer):
    labels = {0: "sports", 1: "politics", 2: "tech"}
    path = _save_classifier(
        tmp_path / "multi", tokenizer, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()},
        problem_type=MULTI_LABEL,
    )
    model, tok, info = load_classifier(str(path), CPU)
    assert info.problem_type == MULTI_LABEL
    results = predict(model, tok, info, TEXTS, batch_size=4)
    assert any(len(r["labels"]) >= 2 for r in results) or any(not r["labels"] for r in results)  # not softmax-like
    for r in results:
        assert set(r) == {"text", "labels", "scores"}
        assert list(r["scores"]) == ["sports", "politics", "tech"]
        assert all(0.0 <= p <= 1.0 for p in r["scores"].values())
        assert r["labels"] == [name for name, p in r["scores"].items() if p >= 0.5]


def test_regression_head(tmp_path, tokenizer):
    path = _save_classifier(tmp_path / "reg", tokenizer, num_labels=1, problem_type=REGRESSION)
    model, tok, info = load_classifier(str(path), CPU)
    assert info.problem_type == REGRESSION
    results = predict(model, tok, info, TEXTS, batch_size=3)
    assert [set(r) for r in results] == [{"text", "score"}] * len(TEXTS)
    raw = model(**tok(TEXTS[2], return_tensors="pt")).logits  # the raw output, no sigmoid
    assert results[2]["score"] == pytest.approx(raw.item(), abs=1e-5)


def test_one_output_without_problem_type_is_regression(tmp_path, tokenizer):
    path = _save_classifier(tmp_path / "reg", tokenizer, num_labels=1)
    assert load_classifier(str(path), CPU)[2].problem_type == REGRESSION


# ----------------------------------------------------------------------------------------------
# load_classifier errors


def test_load_missing_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_classifier(str(tmp_path / "nope"), CPU)


def test_load_dir_without_config_points_at_final(tmp_path, single_dir):
    with pytest.raises(DataError, match="no config.json.*give a fine-tuned"):
        load_classifier(str(tmp_path), CPU)
    run_dir = single_dir.parent  # holds final/: the message names it
    with pytest.raises(DataError, match=r"no config\.json.*use .*final"):
        load_classifier(str(run_dir), CPU)


def test_load_masked_lm_says_fine_tune_first(tmp_path, tokenizer):
    path = tmp_path / "mlm"
    BertForMaskedLM(BertConfig(**TINY)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    with pytest.raises(ConfigError, match="not a text classifier.*BertForMaskedLM.*lmtune finetune"):
        load_classifier(str(path), CPU)


def test_load_without_tokenizer(tmp_path):
    path = tmp_path / "notok"
    cfg = BertConfig(**TINY, num_labels=2)
    BertForSequenceClassification(cfg).save_pretrained(path)
    with pytest.raises(DataError, match="holds no tokenizer"):
        load_classifier(str(path), CPU)


# ----------------------------------------------------------------------------------------------
# read_inputs


def test_read_texts_from_arguments():
    assert read_inputs(["a b", "c"], None) == ["a b", "c"]


def test_read_txt_skips_blank_lines(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("first line\n\n   \nsecond, line\r\nthird\n")
    assert read_inputs([], str(path)) == ["first line", "second, line", "third"]


def test_read_jsonl_column(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": 1, "body": "hello"}\n\n{"id": 2, "body": "w\\u00f6rld"}\n')
    assert read_inputs([], str(path), text_column="body") == ["hello", "wörld"]


def test_read_csv_and_tsv(tmp_path):
    csv_path = tmp_path / "in.csv"
    csv_path.write_text('\ufeffid,text\n1,"hello, world"\n2,"a ""quoted"" one"\n3,\n', encoding="utf-8")
    assert read_inputs([], str(csv_path)) == ["hello, world", 'a "quoted" one', ""]  # one result per row
    tsv_path = tmp_path / "in.tsv"
    tsv_path.write_text("text\tlabel\nhello, world\tpos\n")
    assert read_inputs([], str(tsv_path)) == ["hello, world"]


def test_read_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("one\n\ntwo words\n"))
    assert read_inputs([], "-") == ["one", "two words"]


def test_read_broken_jsonl_names_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": "broken\n')
    with pytest.raises(DataError, match=r"in\.jsonl line 3 is not valid JSON"):
        read_inputs([], str(path))


def test_read_missing_column_names_existing_ones(tmp_path):
    csv_path = tmp_path / "in.csv"
    csv_path.write_text("id,body\n1,hello\n")
    with pytest.raises(DataError, match=r"no column 'text'; its columns are 'id', 'body'"):
        read_inputs([], str(csv_path))
    jsonl_path = tmp_path / "in.jsonl"
    jsonl_path.write_text('{"id": 1, "body": "hello"}\n')
    with pytest.raises(DataError, match=r"line 1 has no 'text' field; its fields are id, body"):
        read_inputs([], str(jsonl_path))


def test_read_nothing_to_predict(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="nothing to predict"):
        read_inputs([], None)
    path = tmp_path / "blank.txt"
    path.write_text("\n  \n")
    with pytest.raises(DataError, match="blank.txt holds no text"):
        read_inputs([], str(path))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(DataError, match="stdin holds no text"):
        read_inputs([], "-")


def test_read_other_input_errors(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        read_inputs(["a"], "in.txt")
    with pytest.raises(DataError, match="does not exist"):
        read_inputs([], str(tmp_path / "missing.txt"))
    (tmp_path / "in.xml").write_text("<a/>")
    with pytest.raises(DataError, match="unsupported type '.xml'"):
        read_inputs([], str(tmp_path / "in.xml"))
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_inputs([], str(tmp_path / "latin.txt"))


def test_cli_refuses_a_device_it_does_not_know_and_a_bad_output(single_dir, runner, tmp_path):
    result = invoke(runner, "predict", single_dir, "a text", "--device", "gpu")
    assert result.exit_code == 2
    assert "device='gpu' is not a device" in result.output
    result = invoke(runner, "predict", single_dir, "a text", "--output", tmp_path)
    assert result.exit_code == 2
    assert "is a directory" in result.output
    (tmp_path / "file").write_text("x")
    result = invoke(runner, "predict", single_dir, "a text", "--output", tmp_path / "file" / "out.jsonl")
    assert result.exit_code == 2
    assert "exists and is a file" in result.output
