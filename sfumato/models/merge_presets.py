"""The checkpoint merger's modes and block-weight presets: plain data, readable without torch (the CLI's parser and
the server's preset list need them)."""

from __future__ import annotations

import math
from typing import Callable

MODES = ("weighted-sum", "add-difference")

# Block-weight presets of the merge-block-weighted tools, as functions of the position x in [0, 1] from IN00 through
# M00 (x = 0.5) to the last OUT block; evaluated at 25 points they are the tools' 25-value tables.
PRESETS: dict[str, Callable[[float], float]] = {
    "GRAD_V": lambda x: abs(2 * x - 1), "GRAD_A": lambda x: 1 - abs(2 * x - 1),
    "FLAT_25": lambda x: 0.25, "FLAT_75": lambda x: 0.75,
    "SMOOTHSTEP": lambda x: 3 * x * x - 2 * x ** 3, "REVERSE_SMOOTHSTEP": lambda x: 1 - (3 * x * x - 2 * x ** 3),
    "COSINE": lambda x: (1 + math.cos(math.pi * x)) / 2, "REVERSE_COSINE": lambda x: (1 - math.cos(math.pi * x)) / 2,
    "ALL_A": lambda x: 0.0, "ALL_B": lambda x: 1.0,
}
