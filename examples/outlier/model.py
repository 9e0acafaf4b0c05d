"""An MLP on digits whose data stream carries one corrupted batch: batch 9 of every epoch holds
images whose pixels were stored as 0..255 instead of 0..1 (a shard saved without scaling).

The stream is read in a fixed order (no shuffling, as a sharded reader emits it), so the bad
batch sits at the same position each epoch: ``stabsweep lr config.yaml`` names it
(``spikes.csv``, and the verdict), ``stabsweep spikes RUN`` ranks it.
"""

from __future__ import annotations

import torch
from torch import nn

import stabsweep
from stabsweep.workloads.digits import NUM_CLASSES, digits_split

BAD_BATCH = 9


def build(seed: int, batch_size: int = 64, hidden: int = 128) -> stabsweep.Workload:
    torch.manual_seed(seed)
    x_train, y_train, x_val, y_val = digits_split()
    x_train = x_train.clone()
    x_train[BAD_BATCH * batch_size : (BAD_BATCH + 1) * batch_size] *= 255.0 / 16  # 0..255, not 0..1
    model = nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES)
    )
    return stabsweep.Workload(
        model=model,
        train_data=stabsweep.TensorBatches(x_train, y_train, batch_size, shuffle=False),
        eval_data=stabsweep.TensorBatches(x_val, y_val, 512, shuffle=False, drop_last=False),
        loss_fn=nn.CrossEntropyLoss(),
        num_classes=NUM_CLASSES,
    )
