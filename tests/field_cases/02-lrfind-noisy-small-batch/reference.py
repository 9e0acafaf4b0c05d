"""Plain PyTorch loop (Adam, constant rate, 300 steps, batches of 4, one thread) at given
rates, judged with the contract's rules: diverged (a loss non-finite or above 4x the first
batch's), learned nothing (final smoothed loss not 5% below the first, or within 5% of
ln 10), else trained; best eval loss (clean labels) at steps 0, 50, ..., 300.
With --full: the loss over the whole training set every 10 steps (no batch noise) and its
largest rise, as a share of the progress made (the contract's 25% rule).
Run: python reference.py RATE [RATE ...] ; python reference.py --full RATE [RATE ...]"""

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


def run(lr, steps=300, seed=0):
    w = workload.build(seed=seed)
    opt = torch.optim.Adam(w.model.parameters(), lr=lr)
    stream, first, ema, evals = iter(w.train_data), None, None, [evaluate(w)]
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
        ema = v if ema is None else (1 - alpha) * ema + alpha * v
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            evals.append(evaluate(w))
    evals.append(evaluate(w))
    nothing = ema > 0.95 * first or ema > 0.95 * math.log(10)
    return (
        f"{'learned_nothing' if nothing else 'trained'}: {first:.3f} -> smoothed {ema:.3f}; best eval {min(evals):.4f}"
    )


if __name__ == "__main__" and sys.argv[1:2] != ["--full"]:
    for rate in sys.argv[1:]:
        print(f"lr={float(rate):.4g}: {run(float(rate))}", flush=True)


def full_train_curve(lr, steps=300, every=10, seed=0):
    """The loss over the whole (noisy-label) training set every `every` steps: the objective
    itself, free of the sampling noise of 4-example batches. Returns the largest rise after
    the running minimum, as a share of the progress made by then (the contract's rule)."""
    w = workload.build(seed=seed)
    full_x, full_y = w.train_data.inputs, w.train_data.targets
    opt = torch.optim.Adam(w.model.parameters(), lr=lr)
    stream, curve = iter(w.train_data), []
    with torch.no_grad():
        curve.append((0, float(w.loss_fn(w.model(full_x), full_y))))
    for step in range(1, steps + 1):
        try:
            x, y = next(stream)
        except StopIteration:
            stream = iter(w.train_data)
            x, y = next(stream)
        loss = w.loss_fn(w.model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            with torch.no_grad():
                curve.append((step, float(w.loss_fn(w.model(full_x), full_y))))
    start, low, worst = curve[0][1], curve[0][1], (0.0, None)
    for step, value in curve:
        low = min(low, value)
        progress = start - low
        if progress > 0.05 * start:
            share = (value - low) / progress
            if share > worst[0]:
                worst = (share, step)
    return curve, worst


if __name__ == "__main__" and sys.argv[1:2] == ["--full"]:
    for rate in sys.argv[2:]:
        curve, (share, at) = full_train_curve(float(rate))
        print(
            f"lr={rate}: full-train loss {[round(v, 3) for _, v in curve[::5]]} (every 50 steps); "
            f"largest rise {100 * share:.0f}% of the progress (at step {at})",
            flush=True,
        )
