"""`mlm.objective: electra`: replaced-token detection, end to end through the CLI and in its pieces."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES, SOUNDS, assert_same_weights, invoke, simulate_crash, tiny_config, write_config
from lmtune.config import load_config
from lmtune.runs import read_metrics

ELECTRA_MODEL = {"arch": "modernbert", "preset": "tiny", "hidden_size": 64, "intermediate_size": 128}


def electra_config(tmp_path: Path, **train) -> Path:
    steps = {"batch_size": 16, "lr": 2.0e-3, "max_steps": 8, "eval_every": None, "save_every": None, "log_every": 2, **train}
    return tiny_config(tmp_path, model=ELECTRA_MODEL, tokenizer={"vocab_size": 256}, mlm={"objective": "electra"}, train=steps)


@pytest.mark.slow
def test_electra_learns_to_spot_an_out_of_place_word_and_reloads_with_plain_transformers(tmp_path, runner):
    from transformers import AutoModelForTokenClassification, AutoTokenizer, ModernBertForTokenClassification

    config = tiny_config(
        tmp_path,
        model={"arch": "modernbert", "preset": "tiny"},  # 2 layers x 128; the generator has 1
        tokenizer={"vocab_size": 256},
        mlm={"objective": "electra"},
        train={"batch_size": 32, "lr": 2.0e-3, "max_steps": 300, "eval_every": 150, "save_every": None, "log_every": 20},
    )
    result = invoke(runner, "pretrain", config, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    # the checkpoint is the discriminator alone: no generator weights in final/
    assert {p.name for p in (run / "final").iterdir()} == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}

    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert train[-1]["loss"] < 0.8 * train[0]["loss"]
    assert [r["step"] for r in evals] == [150, 300]
    assert all({"eval_replaced_accuracy", "eval_replaced_recall", "eval_discriminator_loss", "eval_perplexity"} <= r.keys() for r in evals)

    # plain transformers: a replaced-token detector with one logit a token
    model = AutoModelForTokenClassification.from_pretrained(run / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert isinstance(model, ModernBertForTokenClassification) and model.config.num_labels == 1
    lines = [line.split() for line in (FIXTURES / "animals.txt").read_text().splitlines()[:200]]
    right_sound = {}
    for words in lines:  # "the brown owl says hoot ." -> owl: hoot
        right_sound[words[2]] = words[4]
    wins, trials = 0, 0
    for animal, sound in sorted(right_sound.items()):
        scores = []
        for said in (sound, "the"):  # "the" never follows "says": a replacement the generator made early on
            encoded = tokenizer(f"the old {animal} says {said} .", return_tensors="pt")
            with torch.no_grad():
                logits = model(**encoded).logits[0, :, 0]  # (L,): replaced-token logits
            position = encoded.word_ids().index(4)  # the first piece of the fifth word
            scores.append(float(logits[position]))
        wins += scores[1] > 0 > scores[0]  # the out-of-place word is called replaced, the right sound original
        trials += 1
    assert trials == len(SOUNDS)
    assert wins >= trials - 1, f"the out-of-place word was told from the right sound in {wins} of {trials} sentences"


def test_electra_resume_reaches_bitwise_identical_weights(tmp_path, runner):
    """The generator's samples come from the saved RNG, and its weights from the training checkpoint."""
    config = electra_config(tmp_path, max_steps=8, save_every=4, keep_last=5)
    assert invoke(runner, "pretrain", config, "--precision", "fp32").exit_code == 0
    run = tmp_path / "run"
    full = load_file(run / "final" / "model.safetensors")
    assert any(k.startswith("generator.") for k in load_file(run / "checkpoints" / "step-4" / "model.safetensors"))

    simulate_crash(run, last_saved=4)
    result = invoke(runner, "pretrain", config, "--precision", "fp32", "--resume")
    assert result.exit_code == 0, result.output
    resumed = load_file(run / "final" / "model.safetensors")
    assert_same_weights(full, resumed)


def test_finetune_starts_from_the_electra_encoder(tmp_path, runner):
    """`lmtune finetune` on an ELECTRA checkpoint: every encoder weight and the head transform carry over,
    only the classifier is new; the fine-tuned classifier reloads and predicts."""
    from lmtune.labels import LabelSpec
    from lmtune.modeling import load_for_finetuning

    assert invoke(runner, "pretrain", electra_config(tmp_path, max_steps=4), "--precision", "fp32").exit_code == 0
    final = tmp_path / "run" / "final"
    saved = load_file(final / "model.safetensors")
    spec = LabelSpec(problem="single_label", names=("negative", "positive"))
    model, note = load_for_finetuning(str(final), spec, None)
    assert "new classification head" in note
    state = model.state_dict()
    kept = [k for k in saved if not k.startswith("classifier.")]
    assert kept and all(torch.equal(saved[k], state[k]) for k in kept)
    assert state["classifier.weight"].shape == (2, 64)

    finetune = write_config(
        tmp_path / "finetune.yaml",
        output_dir=str(tmp_path / "ft"),
        device="cpu",
        model={"checkpoint": str(final)},
        data={"train": [str(FIXTURES / "reviews" / "train.jsonl")], "validation": [str(FIXTURES / "reviews" / "validation.jsonl")], "max_length": 32},
        train={"batch_size": 16, "lr": 1.0e-3, "max_steps": 3, "eval_every": None, "save_every": None, "log_every": 1},
    )
    result = invoke(runner, "finetune", finetune, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    result = invoke(runner, "predict", tmp_path / "ft" / "final", "a fine film")
    assert result.exit_code == 0, result.output


def test_eval_refuses_a_checkpoint_without_a_masked_lm_head(tmp_path, runner):
    assert invoke(runner, "pretrain", electra_config(tmp_path, max_steps=2), "--precision", "fp32").exit_code == 0
    result = invoke(runner, "eval", tmp_path / "run" / "final", "--data", FIXTURES / "animals.txt")
    assert result.exit_code == 2
    assert "no masked-LM head" in result.output and "lmtune finetune" in result.output
    assert not (tmp_path / "run" / "eval-animals").exists()


def test_a_generator_as_deep_as_the_model_is_refused(tmp_path, runner):
    config = electra_config(tmp_path)
    result = invoke(runner, "pretrain", config, "--set", "mlm.generator_layers=2")
    assert result.exit_code == 2
    assert "mlm.generator_layers=2" in result.output and "2 layers" in result.output
    assert not (tmp_path / "run").exists()
    assert load_config(config).mlm.generator_layers == 1


def test_replacements_fall_only_on_selected_tokens_and_embeddings_are_shared():
    from lmtune.config import ModelSection
    from lmtune.electra import _forward, build_electra
    from lmtune.tokenization import train_tokenizer

    lines = (FIXTURES / "animals.txt").read_text().splitlines()
    tokenizer = train_tokenizer(lines, "modernbert", 128, min_frequency=1, max_length=32)
    model = build_electra(ModelSection(**ELECTRA_MODEL), tokenizer, 0, generator_layers=1, discriminator_weight=50.0)
    shared = model.discriminator.get_input_embeddings().weight
    assert model.generator.get_input_embeddings().weight is shared
    assert model.generator.get_output_embeddings().weight is shared
    assert len(model.generator.base_model.layers) == 1 and len(model.discriminator.base_model.layers) == 2

    torch.manual_seed(0)
    original = torch.randint(5, len(tokenizer), (4, 24))
    selected = torch.rand(4, 24) < 0.3
    input_ids = original.masked_fill(selected, tokenizer.mask_token_id)
    labels = original.masked_fill(~selected, -100)
    seen = {}

    def spy(module, args, kwargs):
        seen["corrupted"] = kwargs["input_ids"].clone()

    handle = model.discriminator.register_forward_pre_hook(spy, with_kwargs=True)
    model.eval()
    with torch.no_grad():
        loss, stats = _forward(model, {"input_ids": input_ids, "labels": labels}, torch.Generator().manual_seed(0))
    handle.remove()
    corrupted = seen["corrupted"]
    assert torch.equal(corrupted[~selected], original[~selected])  # untouched where nothing was selected
    assert (corrupted[selected] != tokenizer.mask_token_id).float().mean() > 0.9  # the masks were filled in
    assert int(stats["replaced"]) == int((corrupted != original).sum())
    assert torch.isfinite(loss) and float(stats["masked"]) == float(selected.sum())
