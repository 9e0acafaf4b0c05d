"""Workloads of real libraries' models, built from tiny configs without downloads: a
HuggingFace GPT-2 (tied input and output embeddings, its own loss), a HuggingFace BERT for
sequence classification (attention masks, its own loss), and ResNets with BatchNorm written
the way torchvision's ``BasicBlock`` builds them (torchvision 0.28 for torch 2.13 is a CUDA
build that does not import here, and timm needs torchvision).

Named in configs as ``tests.real_models:NAME`` (a module path, resolved from the repository
root). The transformers factories need the ``models`` test extra; tests skip without it.
"""

from __future__ import annotations

import torch
from torch import nn

import stabsweep

VOCAB = 48


def markov_tokens(seed: int, count: int, length: int, vocab: int = VOCAB) -> torch.Tensor:
    """Sequences from a seeded first-order Markov chain: a language with structure to learn."""
    generator = torch.Generator().manual_seed(1000 + seed)
    transitions = torch.softmax(3 * torch.randn(vocab, vocab, generator=generator), dim=-1)
    tokens = torch.empty(count, length, dtype=torch.long)
    tokens[:, 0] = torch.randint(vocab, (count,), generator=generator)
    for t in range(1, length):
        tokens[:, t] = torch.multinomial(transitions[tokens[:, t - 1]], 1, generator=generator).squeeze(1)
    return tokens


def gpt2(seed: int, batch_size: int = 16, layers: int = 2, dim: int = 32) -> stabsweep.Workload:
    """A 2-layer GPT-2 language model; the loss is the model's own ``.loss``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=dim, n_layer=layers, n_head=2, tie_word_embeddings=True
    )
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
    model = GPT2LMHeadModel(config)
    tokens = markov_tokens(0, 640, 16)
    train = stabsweep.TensorBatches(tokens[:512], tokens[:512], batch_size, seed=seed)
    val = stabsweep.TensorBatches(tokens[512:], tokens[512:], 64, shuffle=False, drop_last=False)

    def loss(model: nn.Module, batch) -> torch.Tensor:
        inputs, labels = batch
        return model(input_ids=inputs, labels=labels).loss

    return stabsweep.Workload(model=model, train_data=train, eval_data=val, loss=loss, num_classes=VOCAB)


class _MaskedBatches:
    """Dict batches as a HuggingFace collator gives them: input_ids, attention_mask, labels."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
        self.ids, self.mask, self.labels, self.batch_size, self.seed, self.epoch = (
            ids,
            mask,
            labels,
            batch_size,
            seed,
            0,
        )

    def __len__(self) -> int:
        return len(self.ids) // self.batch_size

    def __iter__(self):
        order = torch.randperm(len(self.ids), generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch))
        self.epoch += 1
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield {"input_ids": self.ids[index], "attention_mask": self.mask[index], "labels": self.labels[index]}


def bert(seed: int, batch_size: int = 16, layers: int = 2, dim: int = 32) -> stabsweep.Workload:
    """A 2-layer BERT classifier on padded sequences: is token 7 among the real (unpadded) ones?"""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * dim,
        max_position_embeddings=32,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config)
    generator = torch.Generator().manual_seed(77)
    ids = torch.randint(1, VOCAB, (640, 16), generator=generator)
    lengths = torch.randint(6, 17, (640,), generator=generator)
    mask = (torch.arange(16)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # 0 is the padding token
    labels = ((ids == 7) & mask.bool()).any(dim=1).long()
    train = _MaskedBatches(ids[:512], mask[:512], labels[:512], batch_size, seed)
    val = _MaskedBatches(ids[512:], mask[512:], labels[512:], 64, 0)

    def loss(model: nn.Module, batch) -> torch.Tensor:
        return model(**batch).loss

    return stabsweep.Workload(model=model, train_data=train, eval_data=val, loss=loss, num_classes=2)


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock: conv3x3-BN-ReLU-conv3x3-BN, plus the identity (or a
    1x1 conv and BN when the shape changes), then ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A small ResNet as torchvision builds one (stem, stages of BasicBlocks, pooling, a linear
    head), for 8×8 digits; ``widen`` makes it a WideResNet-style network (wider stages)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32), blocks: int = 1, widen: int = 1, classes: int = 10):
        super().__init__()
        widths = tuple(w * widen for w in widths)
        self.conv1 = nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, inplanes = [], widths[0]
        for i, planes in enumerate(widths):
            for b in range(blocks):
                stages.append(BasicBlock(inplanes, planes, stride=2 if (i > 0 and b == 0) else 1))
                inplanes = planes
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, classes)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(self.pool(self.layers(x)), 1))


def _digits(seed: int, batch_size: int):
    from stabsweep.workloads.digits import digits_split

    x_train, y_train, x_val, y_val = digits_split()
    x_train, x_val = x_train.reshape(-1, 1, 8, 8), x_val.reshape(-1, 1, 8, 8)
    train = stabsweep.TensorBatches(x_train, y_train, batch_size, seed=seed)
    val = stabsweep.TensorBatches(x_val, y_val, 256, shuffle=False, drop_last=False)
    return train, val


def resnet(seed: int, batch_size: int = 64, widen: int = 1, blocks: int = 1) -> stabsweep.Workload:
    torch.manual_seed(seed)
    train, val = _digits(seed, batch_size)
    model = ResNet(widen=widen, blocks=blocks)
    return stabsweep.Workload(model=model, train_data=train, eval_data=val, loss_fn=nn.CrossEntropyLoss())


def wide_resnet(seed: int, batch_size: int = 64) -> stabsweep.Workload:
    return resnet(seed, batch_size, widen=2, blocks=2)
