"""Augmentation of whole volumes before sampling: ``augment: {copies: K, transforms: [...]}``.

Any TorchIO transform, random ones included, by its class and argument names
(``RandomAffine: {degrees: 10}``), run through TorchIO itself; ``Compose`` and
``OneOf`` nest lists of them. ``module:function`` entries run custom code: by
default on a ``tio.Subject`` (a function returning the subject, or a class, such
as a ``tio.Transform`` subclass, made with the entry's arguments), and with
``input: arrays`` on arrays and affines (patchcli.transforms.function), given
a seeded ``rng``.

Each subject is augmented ``copies`` times, independently: copy ``c`` of the
subject in manifest row ``r`` seeds torch from ``(seed, r, c)``
(patchcli.sampling.random), with one torch thread, so that its volumes are the
same whatever the workers, shards and resumes. The images enter TorchIO as
TorchIO reads files (float32, ``ScalarImage``/``LabelMap``/sampling map, in the
config's order) and must come back on the grid they went in on: transforms
that move the grid belong in ``preprocess``.

The configuration is checked without torch (:func:`parse_augment`); TorchIO is
imported where the transforms are made (:class:`Augmenter`: the run's plan and
each worker), never by the command line at startup.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, PatchcliError
from ..sampling.random import FUNCTIONS, copy_rng, copy_torch_seed
from .function import apply_arrays_function, is_function_reference, load_function
from .image import INTENSITY, LABEL, Image, ImageGeometry, Subject
from .registry import checked_arguments, did_you_mean

#: The command that installs what ``augment`` needs.
INSTALL_AUGMENT = "pip install 'patchcli[augment]'"
#: More copies than this per subject is refused as a mistake.
MAX_COPIES = 10_000
#: Reserved key of a ``module:function`` entry: what the function takes.
FUNCTION_INPUTS = ("subject", "arrays")
#: TorchIO transforms that hold other transforms in their ``transforms`` argument.
CONTAINERS = ("Compose", "OneOf")


@dataclass(frozen=True)
class AugmentStep:
    """One entry of ``augment.transforms``: a TorchIO class name or ``module:function``,
    and its arguments as given (``input`` apart, for functions)."""

    name: str
    arguments: Any
    input: str | None = None

    def describe(self) -> Any:
        arguments = dict(self.arguments) if isinstance(self.arguments, Mapping) else self.arguments
        if self.input == "arrays":
            arguments = {**(arguments or {}), "input": "arrays"}
        return self.name if arguments in (None, {}) else {self.name: arguments}


@dataclass(frozen=True)
class Augmentation:
    """A config's ``augment``: how many copies of each subject, and the transforms."""

    copies: int
    steps: tuple[AugmentStep, ...]

    def describe(self) -> dict[str, Any]:
        """Plain values, as recorded and fingerprinted (with the versions of TorchIO and
        torch that draw the copies, when installed)."""
        return {
            "copies": self.copies,
            "transforms": [step.describe() for step in self.steps],
            "torchio": _installed("torchio"),
            "torch": _installed("torch"),
        }

    @property
    def uses_torchio(self) -> bool:
        return any(step.input != "arrays" for step in self.steps)


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _entry(entry: Any, where: str) -> tuple[Any, Any]:
    if isinstance(entry, str):
        return entry, None
    if isinstance(entry, Mapping) and len(entry) == 1:
        return next(iter(entry.items()))
    raise ConfigError(
        f"{where}: each transform is a name or {{Name: {{argument: value}}}}, not {entry!r}"
    )


def parse_augment(value: Any, image_types: Mapping[str, str]) -> Augmentation | None:
    """A config's ``augment`` mapping, checked without importing torch.

    Examples
    --------
    >>> augmentation = parse_augment(
    ...     {"copies": 4, "transforms": ["RandomFlip", {"RandomAffine": {"degrees": 10}}]},
    ...     {"t1": "intensity", "seg": "label"},
    ... )
    >>> augmentation.copies, [step.name for step in augmentation.steps]
    (4, ['RandomFlip', 'RandomAffine'])
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"augment must be {{copies: K, transforms: [...]}}, not {value!r}")
    unknown = [key for key in value if key not in ("copies", "transforms")]
    if unknown:
        raise ConfigError(
            f"augment has no key {unknown[0]!r}"
            f"{did_you_mean(str(unknown[0]), ('copies', 'transforms'))} (keys: copies, transforms)"
        )
    copies = value.get("copies", 1)
    if isinstance(copies, bool) or not isinstance(copies, int) or not 1 <= copies <= MAX_COPIES:
        raise ConfigError(f"augment.copies must be a count from 1 to {MAX_COPIES}, not {copies!r}")
    entries = value.get("transforms")
    if isinstance(entries, (str, Mapping)) or not isinstance(entries, Sequence) or not entries:
        raise ConfigError(
            f"augment.transforms must be a non-empty list of transforms, not {entries!r}"
        )
    steps = []
    for number, entry in enumerate(entries):
        where = f"augment.transforms[{number}]"
        name, arguments = _entry(entry, where)
        if not isinstance(name, str):
            raise ConfigError(f"{where}: a transform's name must be text, not {name!r}")
        step_input = None
        if is_function_reference(name):
            arguments = {} if arguments is None else arguments
            if not isinstance(arguments, Mapping):
                raise ConfigError(
                    f"{where}: {name} takes keyword arguments {{argument: value}}, "
                    f"not {arguments!r}"
                )
            arguments = dict(arguments)
            step_input = arguments.pop("input", "subject")
            if step_input not in FUNCTION_INPUTS:
                raise ConfigError(
                    f"{where}: {name}: input must be subject (a tio.Subject) or arrays, "
                    f"not {step_input!r}"
                )
        _check_images(arguments, image_types, where)
        steps.append(AugmentStep(name, arguments, step_input))
    return Augmentation(copies, tuple(steps))


def _check_images(arguments: Any, image_types: Mapping[str, str], where: str) -> None:
    if not isinstance(arguments, Mapping):
        return
    for key in ("include", "exclude"):
        names = arguments.get(key)
        for name in [names] if isinstance(names, str) else names or ():
            if name not in image_types:
                raise ConfigError(
                    f"{where}: {key} names {name!r}, which is not an image "
                    f"(images: {list(image_types)})"
                )


def import_torchio():
    """TorchIO (and torch), or a ConfigError naming the install command."""
    try:
        import torch  # noqa: F401
        import torchio
    except ImportError as error:
        raise ConfigError(
            f"augment runs TorchIO's transforms, which are not installed ({error}); "
            f"install them with: {INSTALL_AUGMENT}"
        ) from None
    return torchio


def augmented_geometry(geometry: ImageGeometry) -> ImageGeometry:
    """An image after augmentation: on its grid still; intensity images as TorchIO gives
    them, float32 (the plan then applies ``output.dtype``); labels and sampling maps keep
    their dtype (values rounded back into it, and refused if out of range)."""
    if geometry.type == INTENSITY:
        return geometry.with_dtype(np.float32)
    return geometry


class Augmenter:
    """An :class:`Augmentation` made into TorchIO transforms and callables, ready to run.

    Parameters
    ----------
    augmentation : Augmentation
    image_types : mapping of str to str
        Image name -> type, in the config's order.

    Raises
    ------
    ConfigError
        TorchIO or torch missing (naming the install command), an unknown transform or
        argument (with the closest known one), or arguments TorchIO refuses.
    """

    def __init__(self, augmentation: Augmentation, image_types: Mapping[str, str]) -> None:
        self.augmentation = augmentation
        self.image_types = dict(image_types)
        self.tio = import_torchio() if augmentation.uses_torchio else None
        self.steps: list[tuple[str, Callable, AugmentStep]] = []
        for number, step in enumerate(augmentation.steps):
            where = f"augment.transforms[{number}]"
            if step.input == "arrays":
                self.steps.append(("arrays", load_function(step.name, where), step))
            else:
                transform = self._torchio(step.name, step.arguments, where)
                self.steps.append(("torchio", transform, step))

    # ------------------------------------------------------------- making transforms
    def _torchio(self, name: str, arguments: Any, where: str) -> Callable:
        tio = self.tio
        if is_function_reference(name):
            target = load_function(name, where)
            arguments = dict(arguments or {})
            if inspect.isclass(target):
                return _construct(target, arguments, f"{where}: {name}")
            return _SubjectFunction(tio, target, name, arguments)
        known = _torchio_transforms(tio)
        if name not in known:
            raise ConfigError(
                f"{where}: unknown TorchIO transform {name!r}{did_you_mean(name, known)}"
            )
        cls = known[name]
        arguments = checked_arguments(cls, name, arguments, _BASE_PARAMETERS, where)
        if name in CONTAINERS:
            arguments["transforms"] = self._children(name, arguments.get("transforms"), where)
        if name == "Lambda" and isinstance(arguments.get("function"), str):
            arguments["function"] = load_function(arguments["function"], where)
        return _construct(cls, arguments, f"{where}: {name}")

    def _children(self, name: str, entries: Any, where: str):
        if isinstance(entries, (str, Mapping)) or not isinstance(entries, Sequence) or not entries:
            raise ConfigError(f"{where}: {name} needs transforms: a non-empty list of transforms")
        weighted = name == "OneOf" and all(
            isinstance(e, Sequence) and not isinstance(e, str) and len(e) == 2 for e in entries
        )
        children = {} if weighted else []
        for number, entry in enumerate(entries):
            inner = f"{where}.{name}[{number}]"
            child_entry, probability = entry if weighted else (entry, None)
            child_name, child_arguments = _entry(child_entry, inner)
            if is_function_reference(child_name) and isinstance(child_arguments, Mapping):
                if child_arguments.get("input", "subject") != "subject":
                    raise ConfigError(f"{inner}: inside {name}, functions take a tio.Subject")
                child_arguments = {k: v for k, v in child_arguments.items() if k != "input"}
            _check_images(child_arguments, self.image_types, inner)
            child = self._torchio(str(child_name), child_arguments, inner)
            if weighted:
                children[child] = probability
            else:
                children.append(child)
        return children

    # -------------------------------------------------------------------- running
    def augment(self, subject: Subject, seed: int, manifest_row: int, copy: int) -> Subject:
        """Copy ``copy`` of ``subject`` (which is left as it was), on the same grid.

        TorchIO's transforms run as one ``tio.Compose`` (a run of them between two
        ``input: arrays`` functions as one each), in one torch stream seeded from
        ``(seed, manifest_row, copy)``: with TorchIO's transforms alone, the copy is what
        ``tio.Compose(transforms)`` gives after ``torch.manual_seed`` of that seed. The
        functions share one numpy generator of the same triple.

        Raises
        ------
        DataError
            Naming the subject and the copy: a transform failed on it, or moved an image
            off its grid.
        """
        try:
            with self._seeded(seed, manifest_row, copy):
                current = self._augment(subject, copy_rng(seed, manifest_row, copy, FUNCTIONS))
            _check_grids(subject, current)
        except DataError as error:
            named = f"subject {subject.id!r}: "
            message = str(error)
            if f"copy {copy}" not in message and named in message:
                message = message.replace(named, f"{named}copy {copy}: ", 1)
            raise DataError(message) from None
        return current

    def _augment(self, subject: Subject, rng: np.random.Generator) -> Subject:
        current = Subject(subject.id, dict(subject.images), subject.tolerance)
        pending: list[Callable] = []
        for kind, function, step in self.steps:
            if kind == "torchio":
                pending.append(function)
                continue
            if pending:
                current = self._run_torchio(pending, current)
                pending = []
            for image in current:  # the function may change arrays in place: not the subject's
                if image.data is subject[image.name].data:
                    current.images[image.name] = replace(image, data=image.data.copy())
            apply_arrays_function(function, step.name, current, step.arguments, rng)
        if pending:
            current = self._run_torchio(pending, current)
        return current

    @contextmanager
    def _seeded(self, seed: int, row: int, copy: int) -> Iterator[None]:
        """torch's generator seeded for one copy, and one thread (reductions then add in one
        order, whatever the process layout); both restored after."""
        if self.tio is None:
            yield
            return
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(copy_torch_seed(seed, row, copy))
                yield
        finally:
            torch.set_num_threads(threads)

    def _run_torchio(self, transforms: list[Callable], subject: Subject) -> Subject:
        import torch

        tio = self.tio
        tio_subject = tio.Subject({image.name: _to_torchio(tio, torch, image) for image in subject})
        first = next(iter(subject))
        try:
            result = tio.Compose(transforms)(tio_subject)
        except PatchcliError:
            raise
        except Exception as error:  # TorchIO's or the user's code, on this subject's voxels
            raise DataError(
                f"{first.path}: subject {subject.id!r}: augment failed: "
                f"{type(error).__name__}: {error}"
            ) from None
        if not isinstance(result, tio.Subject):
            raise DataError(
                f"{first.path}: subject {subject.id!r}: augment must give a tio.Subject, "
                f"not {type(result).__name__}"
            )
        images = {}
        for image in subject:
            if image.name not in result:
                raise DataError(
                    f"{first.path}: subject {subject.id!r}: augment dropped image {image.name!r}"
                )
            done = result[image.name]
            images[image.name] = Image(
                image.name, image.type, done.data.numpy(), np.asarray(done.affine), image.path
            )
        return Subject(subject.id, images, subject.tolerance)


_BASE_PARAMETERS = ("p", "copy", "include", "exclude", "keys", "keep", "parse_input", "label_keys")


def _torchio_transforms(tio) -> dict[str, type]:
    return {
        name: value
        for name, value in vars(tio).items()
        if inspect.isclass(value)
        and issubclass(value, tio.transforms.Transform)
        and not inspect.isabstract(value)
        and name not in ("Transform", "SpatialTransform", "IntensityTransform", "LabelTransform")
    }


def _construct(cls: type, arguments: Mapping[str, Any], where: str):
    try:
        return cls(**arguments)
    except PatchcliError:
        raise
    except Exception as error:  # TorchIO checks its arguments with ValueError, TypeError, ...
        raise ConfigError(f"{where}: {type(error).__name__}: {error}") from None


class _SubjectFunction:
    """A ``module:function`` on a ``tio.Subject``, with the entry's arguments."""

    def __init__(self, tio, function: Callable, name: str, arguments: Mapping[str, Any]):
        self.tio, self.function, self.name, self.arguments = tio, function, name, dict(arguments)

    def __call__(self, subject):
        result = self.function(subject, **self.arguments)
        if not isinstance(result, self.tio.Subject):
            raise TypeError(f"{self.name} returned {type(result).__name__}, not a tio.Subject")
        return result


def _to_torchio(tio, torch, image: Image):
    """An image as TorchIO has it after reading its file: float32 (``get_fdata``)."""
    # A copy: TorchIO's transforms may work in place (copy=False), and every copy starts
    # from the same preprocessed volumes.
    tensor = torch.from_numpy(np.array(image.data, dtype=np.float32))
    affine = np.asarray(image.affine, dtype=np.float64).copy()
    if image.type == LABEL:
        return tio.LabelMap(tensor=tensor, affine=affine)
    if image.type == INTENSITY:
        return tio.ScalarImage(tensor=tensor, affine=affine)
    return tio.Image(tensor=tensor, affine=affine, type=tio.SAMPLING_MAP)


def _check_grids(before: Subject, after: Subject) -> None:
    for image in before:
        done = after[image.name]
        if not done.on_grid_of(image, before.tolerance):
            raise DataError(
                f"{image.path}: subject {before.id!r}: augment moved image {image.name!r} off "
                f"its grid ({image.spatial_shape} -> {done.spatial_shape}, or its affine); "
                "augmented copies keep the grid: put transforms that change it (Resample, "
                "CropOrPad, ...) in preprocess"
            )


__all__ = [
    "INSTALL_AUGMENT",
    "AugmentStep",
    "Augmentation",
    "Augmenter",
    "augmented_geometry",
    "import_torchio",
    "parse_augment",
]
