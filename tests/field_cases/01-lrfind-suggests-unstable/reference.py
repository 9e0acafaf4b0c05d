"""Plain PyTorch loop (SGD momentum 0.9, constant rate, 400 steps, one thread), judged with the
contract's divergence rule (a loss non-finite or above 4x the first batch's) and an early
spike check (above 2x the first loss in the first 10% of steps); best eval loss at steps
0, 50, ..., 400. Run: python reference.py RATE [RATE ...]"""

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


def run(lr, steps=400):
    w = workload.build(seed=0)
    opt = torch.optim.SGD(w.model.parameters(), lr=lr, momentum=0.9)
    stream, first, ema, evals, spike = iter(w.train_data), None, None, [evaluate(w)], None
    alpha = 2 / 21
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
            return f"diverged at step {step} (loss {v:.4g}); best eval {min(evals):.4f}"
        if spike is None and step <= steps // 10 and v > 2 * first:
            spike = step
        ema = v if ema is None else (1 - alpha) * ema + alpha * v
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            evals.append(evaluate(w))
    evals.append(evaluate(w))
    at_chance = ema > 0.95 * math.log(10)
    return (
        f"{'learned_nothing (at chance)' if at_chance else 'trained'}: {first:.3f} -> smoothed {ema:.3f}; "
        f"best eval {min(evals):.4f}; early spike >2x at step {spike}"
    )


if __name__ == "__main__":
    for rate in sys.argv[1:]:
        print(f"lr={float(rate):.4g}: {run(float(rate))}", flush=True)
