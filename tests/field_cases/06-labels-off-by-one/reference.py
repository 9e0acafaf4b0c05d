"""Plain PyTorch loop: SGD with momentum 0.9 at lr=0.1; prints the label range and the
step and error where it stops. Run: python reference.py"""

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import workload  # noqa: E402

w = workload.build(seed=0)
x, y = workload.data()
print(f"labels from {int(y.min())} to {int(y.max())}; model outputs {w.model[-1].out_features} classes")
opt = torch.optim.SGD(w.model.parameters(), lr=0.1, momentum=0.9)
for step, (xb, yb) in enumerate(w.train_data, start=1):
    try:
        loss = w.loss_fn(w.model(xb), yb)
    except Exception as exc:  # noqa: BLE001
        print(f"step {step}: {type(exc).__name__}: {exc}")
        break
    opt.zero_grad()
    loss.backward()
    opt.step()
else:
    print("a whole epoch trained")
