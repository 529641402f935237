"""``RemapLabels``: label values replaced by others (TorchIO's ``RemapLabels``)."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral

import numpy as np

from ...errors import ConfigError, DataError
from ..image import LABEL, Subject
from ..transform import Transform, check_masking_method, mask_of


class RemapLabels(Transform):
    """Replace each label ``old`` by ``remapping[old]`` in ``label`` images, inside
    ``masking_method`` if given. Every replacement reads the original values, so
    ``{1: 2, 2: 3}`` swaps nothing twice.

    Examples
    --------
    >>> import numpy as np
    >>> from patchcli.transforms.image import Image, Subject
    >>> seg = np.array([0, 1, 2, 2]).reshape(1, 4, 1, 1).astype(np.uint8)
    >>> subject = Subject("s", {"seg": Image("seg", "label", seg, np.eye(4))})
    >>> RemapLabels({1: 2, 2: 3}).apply(subject)
    >>> subject["seg"].data.ravel().tolist()
    [0, 2, 3, 3]
    """

    name = "RemapLabels"
    acts_on = (LABEL,)

    def __init__(
        self, remapping: Mapping[int, int], masking_method: str | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(remapping, Mapping) or not all(
            isinstance(k, Integral)
            and isinstance(v, Integral)
            and not isinstance(k, bool)
            and not isinstance(v, bool)
            for k, v in remapping.items()
        ):
            raise ConfigError(
                f"RemapLabels: remapping must map integer labels to integers, not {remapping!r}"
            )
        self.remapping = {int(k): int(v) for k, v in remapping.items()}
        self.masking_method = masking_method

    def arguments(self) -> dict:
        return {"remapping": dict(self.remapping), "masking_method": self.masking_method}

    def check_names(self, image_types) -> None:
        super().check_names(image_types)
        check_masking_method(self.name, self.masking_method, image_types, "masking_method")

    def apply(self, subject: Subject) -> None:
        for image in self.images(subject):
            original = image.data
            present = set(np.unique(original).tolist())
            if not present.intersection(self.remapping):
                continue
            if original.dtype.kind in "iu":
                limits = np.iinfo(original.dtype)
                for new in self.remapping.values():
                    if not limits.min <= new <= limits.max:
                        raise DataError(
                            f"{image.path}: subject {subject.id!r}: RemapLabels: label {new} "
                            f"does not fit the image's dtype {original.dtype}"
                        )
            mask = mask_of(subject, self.masking_method, image, what=self.name)
            remapped = original.copy()
            for old, new in self.remapping.items():
                remapped[mask & (original == old)] = new
            image.data = remapped


__all__ = ["RemapLabels"]
