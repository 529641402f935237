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


#: What a copy's stream is for (``spawn_key`` of its SeedSequence): its locations, the
#: augmentation of its volumes (TorchIO's draws), and the generator given to functions.
LOCATIONS, AUGMENTATION, FUNCTIONS = 0, 1, 2


def copy_seed_sequence(
    seed: int, subject_index: int, copy: int, purpose: int
) -> np.random.SeedSequence:
    """The seed of one augmented copy of a subject, for one ``purpose``.

    A spawn key keeps every copy's streams apart from each other and from
    :func:`subject_rng` (runs without augmentation), and they depend only on
    ``(seed, subject_index, copy)``: the same for any workers, shards and resumes.

    Examples
    --------
    >>> first = copy_rng(0, 3, copy=0).integers(1000, size=3)
    >>> again = copy_rng(0, 3, copy=0).integers(1000, size=3)
    >>> other = copy_rng(0, 3, copy=1).integers(1000, size=3)
    >>> bool((first == again).all()), bool((first == other).all())
    (True, False)
    """
    if min(seed, subject_index, copy) < 0:
        raise ValueError("seed, subject_index and copy must be non-negative")
    return np.random.SeedSequence([int(seed), int(subject_index)], spawn_key=(purpose, int(copy)))


def copy_rng(
    seed: int, subject_index: int, copy: int, purpose: int = LOCATIONS
) -> np.random.Generator:
    """The random generator of one augmented copy of a subject (see
    :func:`copy_seed_sequence`)."""
    return np.random.default_rng(copy_seed_sequence(seed, subject_index, copy, purpose))


def copy_torch_seed(seed: int, subject_index: int, copy: int) -> int:
    """The seed given to torch (``torch.manual_seed``) to augment one copy of a subject:
    63 bits of its :data:`AUGMENTATION` stream."""
    state = copy_seed_sequence(seed, subject_index, copy, AUGMENTATION).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))
