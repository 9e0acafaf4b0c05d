"""A small Transformer language model on a synthetic language generated from the seed.

The language is a first-order Markov chain whose transition rows are drawn from a sparse
Dirichlet: every token has a few likely successors, so there is real structure to learn
(the achievable loss is the chain's entropy rate, well below the chance level ln V) and no
download. The architecture options are the ones the instability literature turns on:
``norm: post`` (Norm(x + f(x)), the original Transformer) needs warmup at high learning
rates where ``norm: pre`` (x + f(Norm(x))) does not; ``rezero`` (x + α·f(x), α starts at 0)
and ``qk_norm`` (normalised queries and keys) are the other known fixes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stabsweep.workloads.base import TensorBatches, Workload


def markov_language(seed: int, vocab: int, seq_len: int, sequences: int, concentration: float = 0.1) -> torch.Tensor:
    """``sequences`` token sequences of length ``seq_len + 1`` from a seeded Markov chain."""
    generator = torch.Generator().manual_seed(seed)
    alpha = torch.full((vocab, vocab), concentration)
    transitions = torch.distributions.Dirichlet(alpha).sample()  # global RNG, seeded by build()
    tokens = torch.empty(sequences, seq_len + 1, dtype=torch.long)
    tokens[:, 0] = torch.randint(vocab, (sequences,), generator=generator)
    for t in range(seq_len):
        tokens[:, t + 1] = torch.multinomial(transitions[tokens[:, t]], 1, generator=generator).squeeze(1)
    return tokens


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        head_dim = dim // heads
        self.q_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, norm: str, rezero: bool, qk_norm: bool) -> None:
        super().__init__()
        self.norm, self.rezero = norm, rezero
        self.attn = Attention(dim, heads, qk_norm)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.alpha = nn.Parameter(torch.zeros(())) if rezero else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha is not None:  # ReZero: no normalisation, a residual gate that starts closed
            x = x + self.alpha * self.attn(x)
            return x + self.alpha * self.mlp(x)
        if self.norm == "pre":
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class TinyLM(nn.Module):
    def __init__(
        self, vocab: int, seq_len: int, dim: int, heads: int, layers: int, norm: str, rezero: bool, qk_norm: bool
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, norm, rezero, qk_norm) for _ in range(layers))
        self.final_norm = nn.LayerNorm(dim) if norm == "pre" and not rezero else nn.Identity()
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) * math.sqrt(self.embed.embedding_dim) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))


def next_token_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    inputs, targets = batch
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def build(
    seed: int,
    batch_size: int = 32,
    vocab: int = 32,
    seq_len: int = 32,
    dim: int = 64,
    heads: int = 4,
    layers: int = 2,
    norm: str = "post",
    rezero: bool = False,
    qk_norm: bool = False,
    train_sequences: int = 2048,
    eval_sequences: int = 256,
) -> Workload:
    if norm not in ("pre", "post"):
        raise ValueError("norm must be 'pre' or 'post'")
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
    torch.manual_seed(seed)
    tokens = markov_language(seed, vocab, seq_len, train_sequences + eval_sequences)
    train, held_out = tokens[:train_sequences], tokens[train_sequences:]
    model = TinyLM(vocab, seq_len, dim, heads, layers, norm, rezero, qk_norm)
    return Workload(
        model=model,
        train_data=TensorBatches(train[:, :-1], train[:, 1:], batch_size, seed=seed),
        eval_data=TensorBatches(held_out[:, :-1], held_out[:, 1:], 256, shuffle=False, drop_last=False),
        loss=next_token_loss,
        num_classes=vocab,
    )
