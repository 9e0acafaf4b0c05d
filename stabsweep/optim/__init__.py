"""The optimizers and learning-rate schedules a config can name, straight from ``torch.optim``.

Registries of names → torch classes and ``lr_scheduler`` builders. They sit below the config
(which checks names and arguments against them) and below the training loops (which build
them), and import nothing of the package but its errors.
"""
