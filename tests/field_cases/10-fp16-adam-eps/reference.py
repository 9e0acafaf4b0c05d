"""Plain PyTorch loop (torch.optim.Adam on the float16 model, constant rate, 200 steps, one
thread), judged with the contract's divergence rule; best eval loss at steps 0, 50, ..., 200.
Run: python reference.py [eps]   (default 1e-8)"""

import math
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import workload  # noqa: E402

torch.set_num_threads(1)


def evaluate(w):
    with torch.no_grad():
        tot, n = 0.0, 0
        for x, y in w.eval_data:
            tot += float(w.loss_fn(w.model(x), y)) * len(x)
            n += len(x)
    return tot / n


def run(lr, eps, steps=200):
    w = workload.build(seed=0)
    opt = torch.optim.Adam(w.model.parameters(), lr=lr, eps=eps)
    stream, first, evals = iter(w.train_data), None, [evaluate(w)]
    for step in range(1, steps + 1):
        try:
            x, y = next(stream)
        except StopIteration:
            stream = iter(w.train_data)
            x, y = next(stream)
        loss = w.loss_fn(w.model(x), y)
        v = float(loss.detach())
        first = v if first is None else first
        if not math.isfinite(v) or v > 4 * first:
            bad = [n for n, p in w.model.named_parameters() if not torch.isfinite(p).all()]
            return f"diverged at step {step} (loss {v}); non-finite weights: {bad}"
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            evals.append(evaluate(w))
    return f"trained: {first:.3f} -> last batch {v:.3f}; best eval {min(evals):.4f}"


if __name__ == "__main__":
    eps = float(sys.argv[1]) if len(sys.argv) > 1 else 1e-8
    for lr in [1e-4, 1e-3, 1e-2, 1e-1]:
        print(f"eps={eps} lr={lr}: {run(lr, eps)}", flush=True)
