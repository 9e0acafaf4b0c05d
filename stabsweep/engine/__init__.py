"""Running trials: the records that describe them and the executors that run them."""
