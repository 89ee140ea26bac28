"""The placebo arm: duplicated real training images, as many as the synthetic arm adds.

Report §3.4: the placebo replaces the synthetic images with an equal number of duplicated real
training images, class by class, so both arms train on the same number of samples and a gain
over placebo reflects information in the synthetic data, not a larger training set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def placebo_indices(
    labels: np.ndarray,
    pool: np.ndarray,
    counts: Mapping[str, int],
    classes: Sequence[str],
    seed: int,
) -> np.ndarray:
    """Indices of the real training images to duplicate, `counts[c]` of them for class c.

    Drawn from the class's training images in `pool` without replacement while they last
    (then again, cycling through a fresh permutation), seeded by the unit's seed, so every
    real image is duplicated about equally often and the result is deterministic.
    """
    chosen: list[np.ndarray] = []
    for class_name, wanted in sorted(counts.items()):
        if wanted <= 0:
            continue
        if class_name not in classes:
            raise ValueError(f"placebo: class {class_name!r} is not a class of the dataset")
        cls = classes.index(class_name)
        members = pool[labels[pool] == cls]
        if len(members) == 0:
            raise ValueError(f"placebo: class {class_name!r} has no training images to duplicate")
        rng = np.random.default_rng([seed, 104729, cls])
        repeats = -(-wanted // len(members))
        order = np.concatenate([rng.permutation(len(members)) for _ in range(repeats)])
        chosen.append(members[order[:wanted]])
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
