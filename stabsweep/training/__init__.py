"""Training one trial: optimizers, schedules, clipping, devices and the loop itself."""
