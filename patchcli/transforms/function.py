"""Custom code in ``preprocess`` and ``augment``: ``module:function`` entries.

An entry whose name has a colon, ``mypackage.mymodule:function``, calls that
function (imported by name: installed, or on ``PYTHONPATH``) with the subject's
images as arrays and affines, and the entry's arguments as keywords::

    def function(images, **arguments):
        # images: {name: {"data": (C, X, Y, Z) array, "affine": (4, 4) array, "type": str}}
        return images  # the same names; new arrays or affines where it changed them

In ``augment``, a function that takes an ``rng`` keyword is given a
``numpy.random.Generator`` seeded from the run's seed, the subject's manifest
row and the copy: its draws are reproducible whatever the workers and shards.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, PatchcliError
from .image import INTENSITY, Image, ImageGeometry, Subject
from .transform import Transform

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_function_reference(name: Any) -> bool:
    """Whether a transform's name is ``module:function`` (custom code)."""
    return isinstance(name, str) and ":" in name


def load_function(reference: str, where: str) -> Callable:
    """Import the callable ``module:attribute`` names (ConfigError when it cannot)."""
    module_name, _, attribute = reference.partition(":")
    if not _DOTTED.match(module_name) or not _DOTTED.match(attribute):
        raise ConfigError(
            f"{where}: {reference!r} is not module:function (e.g. mypackage.transforms:blur)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"{where}: cannot import {module_name!r} for {reference} ({error}); install it "
            "or put its folder on PYTHONPATH"
        ) from None
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ConfigError(f"{where}: module {module_name!r} has no {attribute!r}")
        value = getattr(value, part)
    if not callable(value):
        raise ConfigError(f"{where}: {reference} is not callable")
    return value


def function_digest(reference: str) -> str | None:
    """SHA-256 of the source file of the module a reference names (None when it has
    none, e.g. a compiled module): runs whose custom code differs do not share a
    fingerprint."""
    module_name = reference.partition(":")[0]
    try:
        source = inspect.getsourcefile(importlib.import_module(module_name))
        with open(source, "rb") as stream:  # type: ignore[arg-type]
            return hashlib.sha256(stream.read()).hexdigest()
    except (ImportError, OSError, TypeError):
        return None


def takes_keyword(function: Callable, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def apply_arrays_function(
    function: Callable,
    reference: str,
    subject: Subject,
    arguments: Mapping[str, Any],
    rng: np.random.Generator | None = None,
) -> None:
    """Run a function on ``subject``'s arrays and affines; its results replace the images.

    Raises
    ------
    DataError
        Naming the subject and the function: when it raised, or returned anything but
        every image of the subject as ``{"data": 3D or 4D array, "affine": (4, 4)}``.
    """
    first = next(iter(subject))
    where = f"{first.path}: subject {subject.id!r}: {reference}"
    images = {
        image.name: {"data": image.data, "affine": image.affine.copy(), "type": image.type}
        for image in subject
    }
    keywords = dict(arguments)
    if rng is not None and takes_keyword(function, "rng"):
        keywords["rng"] = rng
    try:
        result = function(images, **keywords)
    except PatchcliError:
        raise
    except Exception as error:  # the user's code: any failure is this subject's
        raise DataError(f"{where} failed: {type(error).__name__}: {error}") from None
    if not isinstance(result, Mapping) or set(result) != set(subject.images):
        got = sorted(result) if isinstance(result, Mapping) else type(result).__name__
        raise DataError(
            f"{where} must return every image by name ({sorted(subject.images)}), not {got}"
        )
    for name, value in result.items():
        image = subject[name]
        try:
            data, affine = np.asarray(value["data"]), np.asarray(value["affine"], dtype=float)
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{where}: image {name!r} must come back as {{'data': array, 'affine': 4x4}}"
            ) from None
        if data.ndim == 3:
            data = data[None]
        if data.ndim != 4 or 0 in data.shape or affine.shape != (4, 4):
            raise DataError(
                f"{where}: image {name!r} came back with data {data.shape} and affine "
                f"{affine.shape}; expected (C, X, Y, Z) and (4, 4)"
            )
        if not np.isfinite(affine).all():
            raise DataError(f"{where}: image {name!r} came back with a non-finite affine")
        subject.images[name] = Image(name, image.type, data, affine, image.path)


class FunctionTransform(Transform):
    """A ``module:function`` entry of ``preprocess``: custom code on arrays and affines.

    Its result's grid is known only from the voxels (like a crop around a mask):
    a grid sampler after it is refused before the run. Intensity images come back
    as float32 (unless ``output.dtype`` says otherwise); labels and sampling maps
    keep their dtype (a float result is rounded into it, and refused if out of range).
    """

    name = "function"

    def __init__(self, reference: str, arguments: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.reference = reference
        self.function_arguments = dict(arguments or {})
        self._function: Callable | None = load_function(reference, reference)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_function"] = None  # imported again by name in each worker
        return state

    @property
    def function(self) -> Callable:
        if self._function is None:
            self._function = load_function(self.reference, self.reference)
        return self._function

    def apply(self, subject: Subject) -> None:
        apply_arrays_function(self.function, self.reference, subject, self.function_arguments)

    def plan(self, images: dict[str, ImageGeometry]) -> dict[str, ImageGeometry]:
        return {name: function_geometry(geometry) for name, geometry in images.items()}

    def describe(self) -> dict[str, dict[str, Any]]:
        return {self.reference: dict(self.function_arguments)}

    def __repr__(self) -> str:
        return f"{self.reference}({self.function_arguments!r})"


def function_geometry(geometry: ImageGeometry) -> ImageGeometry:
    """An image after custom code: grid unknown; intensity as float32 (or wider)."""
    geometry = geometry.with_grid(None, None)
    if geometry.type == INTENSITY:
        geometry = geometry.with_dtype(np.result_type(geometry.dtype, np.float32))
    return geometry


__all__ = [
    "FunctionTransform",
    "apply_arrays_function",
    "function_digest",
    "function_geometry",
    "is_function_reference",
    "load_function",
    "takes_keyword",
]
