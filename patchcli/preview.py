"""``patchcli preview``: a picture of where the patches of one subject are.

From a config, one subject is loaded and sampled in memory (nothing is
written); from an output, its stored locations are drawn over the source
images it records. With ``augment``, one augmented copy of the subject is
drawn (copy 0 unless another is asked for), with that copy's patches: from an
output, the copy is made again from the seed, the subject's manifest row and
the copy's number, as the run made it. The figure shows three orthogonal
slices of an intensity image through the point most patches cover, with the
patches that cross each slice drawn as boxes; the probability or label map
beside it; and for the label sampler, the share of patches centred on each
class against the requested probabilities. matplotlib draws it, headless (Agg).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError
from .io.atomic import atomic_output
from .io.reader import read_patch_output
from .io.volumes import read_volume
from .plan import plan_extraction
from .sampling import pad_volume
from .subject_work import prepare_subject
from .transforms import Image, Subject, apply_transforms, parse_transforms
from .transforms.augment import Augmenter, parse_augment


@dataclass
class PreviewData:
    """What a preview draws: one subject's images and its patch locations."""

    subject: str
    sampler: str
    volumes: dict[str, np.ndarray]  # (C, X, Y, Z)
    image_types: dict[str, str]
    locations: np.ndarray  # (n, 6), in the volumes' voxel coordinates
    patch_size: tuple[int, int, int]
    map_name: str | None = None
    label_probabilities: dict[int, float] | None = None
    #: With ``augment``: the copy drawn, and how many the run makes.
    copy: int | None = None
    copies: int | None = None


def preview_from_config(
    config, sampler: str, subject: str | None = None, copy: int | None = None
) -> PreviewData:
    """Sample one subject of ``config`` in memory (the first, or the one named); with
    ``augment``, its copy ``copy`` (the first by default)."""
    plan = plan_extraction(config, sampler)
    index = _pick(plan.subjects, subject, lambda spec: spec.id, config_path=plan.output_path)
    spec = plan.subjects[index]
    augmentation = plan.settings.augmentation
    copies = None if augmentation is None else augmentation.copies
    copy = _copy(copy, copies, plan.output_path)
    prepared = prepare_subject(plan.settings, spec, plan.counts[index], copy=copy or 0)
    locations = prepared.locations.take(prepared.count)
    settings = plan.settings
    return PreviewData(
        subject=spec.id,
        sampler=sampler,
        volumes={name: np.array(volume) for name, volume in prepared.volumes.items()},
        image_types={name: image.type for name, image in plan.images.items()},
        locations=locations,
        patch_size=tuple(settings.patch_size),
        map_name=settings.probability_map or settings.label_name,
        label_probabilities=None
        if settings.label_probabilities is None
        else {int(k): float(v) for k, v in settings.label_probabilities.items()},
        copy=copy,
        copies=copies,
    )


def preview_from_output(
    path: str | os.PathLike, subject: str | None = None, copy: int | None = None
) -> PreviewData:
    """The stored locations of one subject of an output, over its source images (made
    again as the run made them: preprocessed, and with ``augment`` its copy ``copy``)."""
    import yaml

    output = read_patch_output(path)
    index = _pick(output.subjects, subject, lambda record: record.id, config_path=output.path)
    record = output.subjects[index]
    copies = None if output.copy_index is None else output.copies
    copy = _copy(copy, copies, output.path)
    image_types = dict(zip(output.images, output.image_types, strict=True))
    images = {}
    for name in output.images:
        source = record.source.get(name)
        if not source or not Path(source).exists():
            raise DataError(
                f"{output.path}: subject {record.id!r}: source image {name} not found at "
                f"{source!r}; preview draws over the source images"
            )
        volume = read_volume(source)
        images[name] = Image(name, image_types[name], volume.array, volume.affine, source)
    config = yaml.safe_load(output.attributes.get("config") or "") or {}
    # The stored locations are on the preprocessed grid: preprocess the sources alike.
    subject = Subject(record.id, images, float(config.get("affine_tolerance", 1e-4)))
    apply_transforms(parse_transforms(config.get("preprocess"), image_types), subject)
    selected = output.subject_index == index
    if copy is not None:
        subject = _augmented(subject, config, image_types, record.manifest_row, copy, output.path)
        selected &= output.copy_index == copy
    volumes = {image.name: image.data for image in subject}
    padding = tuple(int(p) for p in np.asarray(output.padding).reshape(-1)[:3])
    if any(padding):
        mode = config.get("padding_mode", 0)
        volumes = {name: pad_volume(v, padding, mode) for name, v in volumes.items()}
    sampler = str(output.attributes.get("sampler", "uniform"))
    probabilities = config.get("label_probabilities")
    return PreviewData(
        subject=record.id,
        sampler=sampler,
        volumes=volumes,
        image_types=image_types,
        locations=output.locations[selected],
        patch_size=tuple(int(p) for p in output.patch_size),
        map_name=config.get("probability_map") or config.get("label_name"),
        label_probabilities=None
        if not probabilities
        else {int(k): float(v) for k, v in probabilities.items()},
        copy=copy,
        copies=copies,
    )


def _copy(copy: int | None, copies: int | None, where) -> int | None:
    """The copy to draw: None without augment, else ``copy`` (0 by default), checked."""
    if copies is None:
        if copy is not None:
            raise ConfigError(f"{where}: no augment, so no copies to choose from (drop --copy)")
        return None
    copy = 0 if copy is None else int(copy)
    if not 0 <= copy < copies:
        raise ConfigError(
            f"{where}: no copy {copy}: the run makes {copies} "
            f"{'copy' if copies == 1 else 'copies'} of each subject (0 to {copies - 1})"
        )
    return copy


def _augmented(subject: Subject, config, image_types, manifest_row, copy: int, where) -> Subject:
    """Copy ``copy`` of the preprocessed ``subject``, made again from the recorded config."""
    if manifest_row is None:
        raise DataError(
            f"{where}: subject {subject.id!r} has no manifest row recorded, and its "
            "augmented copies are drawn from it"
        )
    augmenter = Augmenter(parse_augment(config.get("augment"), image_types), image_types)
    return augmenter.augment(subject, int(config.get("seed", 0)), int(manifest_row), copy)


def _pick(items, wanted: str | None, name_of, config_path) -> int:
    if not items:
        raise DataError(f"{config_path}: no subjects to preview")
    if wanted is None:
        return 0
    for index, item in enumerate(items):
        if name_of(item) == wanted:
            return index
    names = ", ".join(name_of(item) for item in items[:5])
    raise ConfigError(f"{config_path}: no subject {wanted!r} (subjects: {names}, ...)")


def draw_preview(
    data: PreviewData, path: str | os.PathLike, overwrite: bool = False, dpi: int = 100
) -> Path:
    """Draw ``data`` to a PNG at ``path`` (written under a temporary name, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    intensity = next(
        (n for n, kind in data.image_types.items() if kind == "intensity"),
        next(iter(data.volumes)),
    )
    map_name = data.map_name or next(
        (n for n, kind in data.image_types.items() if kind != "intensity"), None
    )
    volume = data.volumes[intensity][0]
    centre = _busiest_point(data.locations, volume.shape)
    rows = 2 if map_name is not None else 1
    columns = 4 if data.sampler == "label" else 3
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows), squeeze=False)
    figure.suptitle(
        f"{data.sampler}: subject {data.subject!r}{describe_copy(data)}, "
        f"{len(data.locations)} patches of " + "x".join(map(str, data.patch_size))
    )
    shown = [(intensity, volume)]
    if map_name is not None:
        shown.append((map_name, data.volumes[map_name][0]))
    for row, (name, array) in enumerate(shown):
        for axis_number in range(3):
            axis = axes[row][axis_number]
            image, kept = _slice(array, axis_number, centre[axis_number])
            axis.imshow(image.T, origin="lower", cmap="gray" if row == 0 else "viridis")
            axis.set_title(f"{name}, {'xyz'[axis_number]} = {centre[axis_number]}")
            axis.set_axis_off()
            for i0, j0, k0, i1, j1, k1 in data.locations.tolist():
                starts, ends = (i0, j0, k0), (i1, j1, k1)
                if not starts[axis_number] <= centre[axis_number] < ends[axis_number]:
                    continue
                a, b = kept
                axis.add_patch(
                    Rectangle(
                        (starts[a] - 0.5, starts[b] - 0.5),
                        ends[a] - starts[a],
                        ends[b] - starts[b],
                        fill=False,
                        edgecolor="#ff3030",
                        linewidth=0.8,
                    )
                )
        if columns == 4:
            axes[row][3].set_axis_off()
    if data.sampler == "label" and map_name is not None:
        _class_chart(axes[0][3], data, map_name)
    figure.tight_layout()
    path = Path(path)
    with atomic_output(path, overwrite) as temporary:
        figure.savefig(temporary, dpi=dpi, format="png")
    plt.close(figure)
    return path


def describe_copy(data: PreviewData) -> str:
    """``", copy 1 of 4"`` for an augmented subject, else nothing."""
    return "" if data.copy is None else f", copy {data.copy} of {data.copies}"


def _slice(array: np.ndarray, axis: int, index: int):
    """A 2D slice of a 3D array across ``axis``, and the two axes it keeps."""
    kept = tuple(a for a in range(3) if a != axis)
    return np.take(array, index, axis=axis).astype(np.float32), kept


def _busiest_point(locations: np.ndarray, shape) -> tuple[int, int, int]:
    """The voxel covered by most patches (by axis, the most covered coordinate)."""
    if not len(locations):
        return tuple(n // 2 for n in shape)
    point = []
    for axis, size in enumerate(shape):
        coverage = np.zeros(size + 1, dtype=np.int64)
        np.add.at(coverage, locations[:, axis], 1)
        np.add.at(coverage, locations[:, axis + 3], -1)
        point.append(int(np.argmax(np.cumsum(coverage)[:size])))
    return tuple(point)


def _class_chart(axis, data: PreviewData, map_name: str) -> None:
    """Share of patches centred on each class, against the requested probabilities."""
    labels = data.volumes[map_name][0]
    centres = data.locations[:, :3] + np.asarray(data.patch_size) // 2
    values = labels[tuple(centres.T)] if len(centres) else np.array([])
    classes = sorted(set(np.unique(values).tolist()) | set(data.label_probabilities or {}))
    shares = [float(np.mean(values == c)) if len(values) else 0.0 for c in classes]
    positions = np.arange(len(classes))
    axis.set_axis_on()
    axis.bar(positions - 0.2, shares, 0.4, label="patches", color="#4c72b0")
    if data.label_probabilities:
        total = sum(data.label_probabilities.values()) or 1.0
        wanted = [data.label_probabilities.get(int(c), 0.0) / total for c in classes]
        axis.bar(positions + 0.2, wanted, 0.4, label="requested", color="#dd8452")
    axis.set_xticks(positions, [str(int(c)) if float(c).is_integer() else str(c) for c in classes])
    axis.set_xlabel(f"{map_name} at the patch centre")
    axis.set_ylabel("share of patches")
    axis.legend()


__all__ = [
    "PreviewData",
    "describe_copy",
    "draw_preview",
    "preview_from_config",
    "preview_from_output",
]
