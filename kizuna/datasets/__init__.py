"""Offline datasets: nothing is downloaded; each loader names the package that provides its files.

Every loader returns ``(x, y)``: ``x`` a float32 tensor ``N×D`` with values in ``[0, 1]`` (images
flattened row-major) and ``y`` an int64 tensor of labels. ``simulated_house`` (a robot's teaching events in a
house) returns a dict of arrays instead. The core library never imports this package.
"""

from kizuna.datasets.house import simulated_house
from kizuna.datasets.images import load_digits, load_fashion_mnist, load_mnist, split

__all__ = ["load_digits", "load_fashion_mnist", "load_mnist", "simulated_house", "split"]
