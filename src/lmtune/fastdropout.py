"""Dropout that is cheap on a CPU.

PyTorch's CPU dropout draws one random number per element from a serial generator: on a 2-core CPU
it takes longer than the softmax, the bf16 matmuls or anything else around it (about 53 ms for one
layer's 32 x 4 x 256 x 256 attention probabilities, against 3 ms for their softmax). Here one 64-bit
draw of the same generator gives four 16-bit lanes, and an element is dropped when its lane falls
under p * 65536: the same Bernoulli(p) masks up to a rounding of p to 1/65536, four times fewer
draws, and the mask is kept as one byte per element for the backward pass.

`install(model, device)` puts it into a Hugging Face model on the CPU: every `nn.Dropout` module, and
for BERT and RoBERTa in eager mode, the dropout of the attention probabilities (an attention function
registered with transformers under the name "lmtune_eager", eager's math otherwise). Saved
checkpoints are unchanged: config.json keeps no attention choice, and the modules have no weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION = "lmtune_eager"  # the name registered with transformers' attention and mask interfaces
_LANES = 65536  # values of a 16-bit lane


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool mask, True with probability 1 - p (up to p's rounding to 1/65536), from torch's generator."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    lanes = words.view(torch.int16)[:n].view(shape)
    return lanes >= round(p * _LANES) - _LANES // 2


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.where(keep, x * ctx.scale, 0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0), None


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`F.dropout(x, p, training)` computed with fewer random draws; off the CPU, F.dropout itself."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    return _Dropout.apply(x, p)


class FastDropout(nn.Dropout):
    """nn.Dropout through `fast_dropout` (same p, same train/eval switch, no weights)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(input)
        return fast_dropout(input, self.p, self.training)


def eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's eager attention (transformers' eager_attention_forward) with the dropout above."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1)
    weights = fast_dropout(weights, dropout, module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask

    if ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(ATTENTION, eager_attention)
        AttentionMaskInterface.register(ATTENTION, eager_mask)


def install(model: nn.Module, device: Any) -> bool:
    """Use the CPU dropout above in `model`; returns whether it has any dropout to speed up.

    Nothing changes off the CPU, where PyTorch's dropout is fused and cheap."""
    if getattr(device, "type", device) != "cpu":
        return False
    active = False
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            active |= module.p > 0
    config = getattr(model, "config", None)
    if config is not None and config.model_type in ("bert", "roberta") and config._attn_implementation == "eager":
        _register()
        model.set_attn_implementation(ATTENTION)
        active |= config.attention_probs_dropout_prob > 0
    return active
