"""``ZNormalization``: zero mean and unit standard deviation, inside a mask or everywhere."""

from __future__ import annotations

import numpy as np

from ...errors import DataError
from ..image import Subject
from ..transform import mask_of
from .base import NormalizationTransform


class ZNormalization(NormalizationTransform):
    """Subtract the mean and divide by the standard deviation (with Bessel's correction, as
    TorchIO's ``torch.std``) of the voxels inside ``masking_method`` (a label image's
    non-zero voxels; None: all). The result is float32. Channels share one mean and
    deviation, as in TorchIO without a mask.

    An empty mask, or values all equal inside it, is an error naming the file (TorchIO
    gives NaN for an empty mask, and stops with a RuntimeError for a constant image).

    Examples
    --------
    >>> import numpy as np
    >>> from patchcli.transforms.image import Image, Subject
    >>> data = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1, 1)
    >>> subject = Subject("s", {"t1": Image("t1", "intensity", data, np.eye(4))})
    >>> ZNormalization().apply(subject)
    >>> [round(float(v), 3) for v in subject["t1"].data.ravel()]
    [-1.162, -0.387, 0.387, 1.162]
    """

    name = "ZNormalization"

    def __init__(self, masking_method: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.masking_method = masking_method

    def arguments(self) -> dict:
        return {"masking_method": self.masking_method}

    def apply(self, subject: Subject) -> None:
        for image in self.images(subject):
            data = image.data.astype(np.float32)
            mask = mask_of(subject, self.masking_method, image, what=self.name)
            values = data[np.broadcast_to(mask, data.shape)]
            where = f"{image.path}: subject {subject.id!r}: {self.name}"
            inside = "" if self.masking_method is None else f" inside mask {self.masking_method!r}"
            if values.size == 0:
                raise DataError(f"{where}: the mask {self.masking_method!r} is empty")
            mean = values.mean(dtype=np.float64)
            std = values.std(dtype=np.float64, ddof=1) if values.size > 1 else 0.0
            if not np.isfinite(mean) or not np.isfinite(std):
                raise DataError(f"{where}: NaN or infinite values{inside}")
            if std == 0:
                raise DataError(
                    f"{where}: every value{inside} is {float(values.flat[0])} "
                    "(standard deviation 0)"
                )
            data -= np.float32(mean)
            data /= np.float32(std)
            image.data = data


__all__ = ["ZNormalization"]
