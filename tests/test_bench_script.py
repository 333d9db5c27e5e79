"""scripts/bench.py's pretraining levers on a tiny model: a lever changes what it says and nothing else."""

from __future__ import annotations

from conftest import load_script

from lmtune import data

bench = load_script("bench")


def test_half_blocks_lever_trains_the_same_tokens_per_step_on_blocks_of_half_the_length(tmp_path, monkeypatch):
    args = bench.parse_args(
        ["--what", "levers", "--arch", "modernbert", "--preset", "tiny", "--levers", "half", "--steps", "2",
         "--warmup", "1", "--batch-size", "4", "--seq-len", "32", "--vocab", "512", "--wait-idle", "0"]
    )
    cfg, placement, tokenizer, blocks, _ = bench.prepare(args, tmp_path)
    seen: list[tuple[int, ...]] = []
    real_block_batches = data.block_batches

    def spy(*args_, **kwargs):
        for batch in real_block_batches(*args_, **kwargs):
            seen.append(tuple(batch["input_ids"].shape))
            yield batch

    monkeypatch.setattr(data, "block_batches", spy)
    shipped = bench.run_lmtune(args, cfg, placement, tokenizer, blocks, tmp_path)
    shipped_shapes, seen[:] = set(seen), []
    half = bench.run_lmtune(args, cfg, placement, tokenizer, blocks, tmp_path, bench.LEVERS["half"][1])
    assert shipped_shapes == {(4, 32)}
    assert set(seen) == {(8, 16)}
    assert shipped["tokens"] == half["tokens"] == 2 * 4 * 32  # the measured steps read as many tokens either way
    assert half["last_loss"] != shipped["last_loss"]  # it did train on other batches
