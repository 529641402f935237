"""Random streams: one independent generator per subject.

Each subject's generator is seeded from ``(seed, subject_index)`` through
:class:`numpy.random.SeedSequence`, so a subject's patches depend only on the
run's seed and the subject's position in the manifest, never on how many
workers or shards process the run, nor on the order they finish in.
"""

from __future__ import annotations

import numpy as np


def subject_rng(seed: int, subject_index: int) -> np.random.Generator:
    """The random generator of subject ``subject_index`` in a run seeded with ``seed``.

    Examples
    --------
    >>> a = subject_rng(0, 3).integers(1000, size=3)
    >>> b = subject_rng(0, 3).integers(1000, size=3)
    >>> bool((a == b).all())
    True
    """
    if seed < 0 or subject_index < 0:
        raise ValueError("seed and subject_index must be non-negative")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(subject_index)]))
