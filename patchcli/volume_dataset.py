"""Patches drawn at training time from a volume store: :class:`VolumeDataset`.

A store (``patchcli volumes``) keeps each subject's preprocessed volumes in
chunks; a patch reads only the chunks it covers. Each item is one patch, shaped
like :class:`~patchcli.dataset.PatchDataset`'s (``{image: {"data", "affine"},
"location", "subject"}``), drawn with the rules of the CLI samplers (uniform,
label with ``label_probabilities``, weighted by a probability map, or the grid
for inference). Item ``i`` of epoch ``e`` draws from
``numpy.random.default_rng([seed, e, i])``: new locations each epoch, the same
ones for the same seed and epoch whatever the loader workers and ranks.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .aggregate import GridAggregator
from .errors import ConfigError, DataError, PatchcliWarning
from .io.hdf5 import open_hdf5
from .io.reader import read_patch_output
from .io.store import read_channel_totals, read_label_runs, read_row_totals
from .patch_tables import patch_affines, subjects_of_rank
from .sampling.geometry import check_patch_fits, to_triplet
from .sampling.grid import grid_locations, grid_padding
from .sampling.tables import ChannelDraw, ChannelTotals, RowDraw, RowTotals, RunDraw
from .sampling.uniform import uniform_locations

SAMPLERS = ("uniform", "label", "weighted", "grid")
#: Subjects whose draw tables a process keeps (least recently used dropped first).
CACHED_SUBJECTS = 64
#: Grid padding a patch can make from its own voxels (the others need the whole volume).
GRID_PADDING_MODES = ("constant", "edge", "reflect", "symmetric")


class VolumeDataset(Dataset):
    """Patches of a volume store, drawn at training time.

    Parameters
    ----------
    path : path
        A store written by ``patchcli volumes`` (or a merge of its shards).
    sampler : {"uniform", "label", "weighted", "grid"}
    patch_size : int or tuple of 3 ints
    samples_per_volume : int
        Patches per subject and epoch (random samplers).
    label_name : str, optional
        The label image (``sampler="label"``; default the store's first label image).
    label_probabilities : mapping of int to float, optional
    probability_map : str, optional
        The sampling map (``sampler="weighted"``; default the store's first sampling map).
    seed : int
    images : sequence of str, optional
        The images an item holds (default all).
    transform : callable, optional
        Applied to each item (as PatchDataset's).
    patch_overlap : int or tuple of 3 ints
        For ``grid``.
    padding_mode : str or float, optional
        For ``grid``: pad each volume by ``patch_overlap // 2`` (a number, ``constant``
        (0), ``edge``, ``reflect`` or ``symmetric``).

    Examples
    --------
    ::

        dataset = VolumeDataset("volumes.h5", sampler="label", patch_size=64,
                                samples_per_volume=16, label_probabilities={0: 1, 1: 3})
        loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=4)
        for epoch in range(epochs):
            dataset.set_epoch(epoch)
            for batch in loader:
                ...
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sampler: str = "uniform",
        patch_size: int | Sequence[int] = 64,
        samples_per_volume: int = 1,
        label_name: str | None = None,
        label_probabilities: Mapping[int, float] | None = None,
        probability_map: str | None = None,
        seed: int = 0,
        images: Sequence[str] | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        patch_overlap: int | Sequence[int] = 0,
        padding_mode: str | float | None = None,
        *,
        allow_external: bool = False,
    ) -> None:
        if sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
        output = read_patch_output(path, allow_external=allow_external)
        if output.kind != "volumes":
            raise DataError(f"{output.path}: not a volume store (made by patchcli volumes)")
        self.path = Path(output.path)
        self.sampler = sampler
        self.patch_size = to_triplet(patch_size, "patch_size")
        self.seed = int(seed)
        self.epoch = 0
        self.transform = transform
        self.image_types = dict(zip(output.images, output.image_types, strict=True))
        self.images = list(output.images if images is None else images)
        for name in self.images:
            if name not in self.image_types:
                raise ConfigError(f"{self.path}: no image {name!r} (images: {output.images})")
        self.subjects = list(output.subjects)
        self.label_probabilities = label_probabilities
        self.label_name = self._image(label_name, "label", sampler == "label")
        self.probability_map = self._image(probability_map, "sampling_map", sampler == "weighted")
        if sampler == "grid":
            self.samples_per_volume = 0
            self._grid(to_triplet(patch_overlap, "patch_overlap", minimum=0), padding_mode)
        else:
            if samples_per_volume < 1:
                raise ConfigError("samples_per_volume must be at least 1")
            self.samples_per_volume = int(samples_per_volume)
            self.padding = np.zeros(3, dtype=np.int64)
            for record in self.subjects:
                try:
                    check_patch_fits(self.patch_size, record.shape)
                except DataError as error:
                    raise DataError(f"{self.path}: subject {record.id!r}: {error}") from None
        self._affines = np.array([r.affine for r in self.subjects]).reshape(-1, 4, 4)
        self._file = None
        self._pid = None
        self._draws: OrderedDict[int, Any] = OrderedDict()

    def _image(self, name: str | None, kind: str, needed: bool) -> str | None:
        if not needed:
            return name
        if name is None:
            found = [image for image, t in self.image_types.items() if t == kind]
            if not found:
                raise DataError(
                    f"{self.path}: the store has no {kind} image, which sampler={self.sampler!r} "
                    "draws from; make the store with one"
                )
            name = found[0]
        if name not in self.image_types:
            raise ConfigError(f"{self.path}: no image {name!r} (images: {list(self.image_types)})")
        return name

    def _grid(self, overlap, padding_mode) -> None:
        if padding_mode is not None and isinstance(padding_mode, str):
            if padding_mode not in GRID_PADDING_MODES:
                raise ConfigError(
                    f"padding_mode {padding_mode!r} needs whole volumes; from a store use a "
                    f"number or one of {', '.join(GRID_PADDING_MODES)}"
                )
        self.padding_mode = padding_mode
        self.patch_overlap = overlap
        self.padding = np.asarray(grid_padding(overlap, padding_mode), dtype=np.int64)
        rows = []
        for number, record in enumerate(self.subjects):
            padded = np.add(record.shape, 2 * self.padding)
            try:
                locations = grid_locations(tuple(padded), self.patch_size, overlap)
            except (DataError, ValueError) as error:
                raise DataError(f"{self.path}: subject {record.id!r}: {error}") from None
            rows.append(np.column_stack([np.full(len(locations), number), locations]))
        self._grid_rows = np.concatenate(rows) if rows else np.zeros((0, 7), dtype=np.int64)

    # ----------------------------------------------------------------- tables
    def __len__(self) -> int:
        if self.sampler == "grid":
            return len(self._grid_rows)
        return len(self.subjects) * self.samples_per_volume

    def set_epoch(self, epoch: int) -> None:
        """Draw the locations of pass ``epoch`` (call it before each epoch, as with
        ``DistributedSampler``; in every loader worker, with persistent workers)."""
        self.epoch = int(epoch)

    def subject_of(self, index: int) -> int:
        """The position in :attr:`subjects` of item ``index``'s subject."""
        if self.sampler == "grid":
            return int(self._grid_rows[index, 0])
        return index // self.samples_per_volume

    def _position(self, subject: str | int) -> int:
        if isinstance(subject, str):
            ids = [record.id for record in self.subjects]
            if subject not in ids:
                raise DataError(f"{self.path}: no subject {subject!r}")
            return ids.index(subject)
        if not 0 <= int(subject) < len(self.subjects):
            raise DataError(f"{self.path}: no subject at position {subject}")
        return int(subject)

    def indices_of_subject(self, subject: str | int) -> np.ndarray:
        """The items of one subject (an id, or a position in :attr:`subjects`)."""
        position = self._position(subject)
        return np.array(
            [i for i in range(len(self)) if self.subject_of(i) == position], dtype=np.int64
        )

    def grid_aggregator(self, subject: str | int, **options: Any) -> GridAggregator:
        """A :class:`~patchcli.aggregate.GridAggregator` for one subject's grid items
        (``sampler="grid"``): give it each batch's data (or a model's output on it) and
        ``location``; ``options`` are its own (``overlap_mode``, ``downsampling_factor``...).

        Examples
        --------
        ::

            dataset = VolumeDataset("volumes.h5", sampler="grid", patch_size=64,
                                    patch_overlap=16, padding_mode="edge")
            aggregator = dataset.grid_aggregator("sub-01", overlap_mode="hann")
            for index in dataset.indices_of_subject("sub-01"):
                item = dataset[index]
                aggregator.add_batch(model(item["t1"]["data"][None]), item["location"][None])
            volume = aggregator.get_output()
        """
        if self.sampler != "grid":
            raise ConfigError("grid_aggregator needs sampler='grid'")
        record = self.subjects[self._position(subject)]
        return GridAggregator(
            record.shape,
            self.patch_size,
            self.patch_overlap,
            padding=tuple(int(p) for p in self.padding),
            **options,
        )

    def split_by_subject(self, num_replicas: int, rank: int) -> np.ndarray:
        """Indices of the items of the subjects given to one of ``num_replicas`` ranks
        (each subject whole to one rank; the same split on every rank)."""
        if self.sampler == "grid":
            counts = np.bincount(self._grid_rows[:, 0], minlength=len(self.subjects)).tolist()
        else:
            counts = [self.samples_per_volume] * len(self.subjects)
        chosen = set(subjects_of_rank(counts, num_replicas, rank))
        return np.array(
            [i for i in range(len(self)) if self.subject_of(i) in chosen], dtype=np.int64
        )

    # ----------------------------------------------------------------- reading
    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        number = self.subject_of(index)
        record = self.subjects[number]
        try:
            self._open()
        except DataError as error:
            raise DataError(f"{error} (reading subject {record.id!r})") from None
        if self.sampler == "grid":
            location = self._grid_rows[index, 1:].astype(np.int64)
        else:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            location = self._draw(number, rng)
        data = {name: torch.from_numpy(self._read(record, name, location)) for name in self.images}
        start = location[:3] - self.padding
        affine = patch_affines(self._affines[number][None], start[None])[0]
        item: dict[str, Any] = {
            name: {"data": tensor, "affine": torch.from_numpy(affine.copy())}
            for name, tensor in data.items()
        }
        item["location"] = torch.from_numpy(location.copy())
        item["subject"] = record.id
        return item if self.transform is None else self.transform(item)

    def _draw(self, number: int, rng: np.random.Generator) -> np.ndarray:
        record = self.subjects[number]
        if self.sampler == "uniform":
            return uniform_locations(record.shape, self.patch_size, 1, rng)[0]
        draw = self._draws.get(number)
        if draw is None:
            draw = self._draw_of(number)
            self._draws[number] = draw
            if len(self._draws) > CACHED_SUBJECTS:
                self._draws.popitem(last=False)
        else:
            self._draws.move_to_end(number)
        return draw.locations(1, rng)[0]

    def _draw_of(self, number: int):
        record = self.subjects[number]
        file = self._open()
        where = f"{self.path}: subject {record.id!r}"
        try:
            if self.sampler == "label":
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", PatchcliWarning)
                    draw = self._label_draw(file, record, where)
                for warning in caught:  # named after the subject, as in a run's warnings
                    warnings.warn(f"subject {record.id!r}: {warning.message}", PatchcliWarning, 2)
                return draw
            name = self.probability_map
            totals = read_row_totals(file, record.id, name)
            if totals is None or totals.patch_size != tuple(self.patch_size):
                # Tables made for another patch size: made again from the map, once.
                values = file[f"volumes/{record.id}/{name}"][0]
                totals = RowTotals.of(values, self.patch_size)
            dataset = file[f"volumes/{record.id}/{name}"]
            return RowDraw(totals, lambda x, y, z0, z1: dataset[0, x, y, z0:z1])
        except DataError as error:
            message = str(error)
            if not message.startswith(str(self.path)):
                message = f"{where}: {message}"
            raise DataError(message) from None
        except (OSError, KeyError) as error:
            raise DataError(f"{where}: cannot read its sampling tables ({error})") from None

    def _label_draw(self, file, record, where: str):
        """The label draw of one subject: its label runs, or for a multi-channel label
        map its channel totals (made again from the map, once, for another patch size)."""
        dataset = file[f"volumes/{record.id}/{self.label_name}"]
        if dataset.shape[0] == 1:
            runs = read_label_runs(file, record.id, self.label_name)
            if runs is None:
                raise DataError(f"{where}: no label table for image {self.label_name!r}")
            return RunDraw(runs, self.patch_size, self.label_probabilities)
        totals = read_channel_totals(file, record.id, self.label_name)
        if totals is None or totals.patch_size != tuple(self.patch_size):
            totals = ChannelTotals.of(dataset[()], self.patch_size)
        return ChannelDraw(
            totals,
            lambda channels, x, y, z0, z1: dataset[channels, x, y, z0:z1],
            self.label_probabilities,
        )

    def _read(self, record, name: str, location: np.ndarray) -> np.ndarray:
        """One patch of one image: the chunks it covers, padded where it leaves the volume."""
        start = location[:3] - self.padding
        stop = location[3:] - self.padding
        low = np.maximum(start, 0)
        high = np.minimum(stop, record.shape)
        try:
            dataset = self._open()[f"volumes/{record.id}/{name}"]
            patch = dataset[:, low[0] : high[0], low[1] : high[1], low[2] : high[2]]
        except (OSError, KeyError) as error:
            raise DataError(
                f"{self.path}: subject {record.id!r}: cannot read volume {name!r} ({error})"
            ) from None
        before, after = low - start, stop - high
        if before.any() or after.any():
            widths = [(0, 0), *zip(before.tolist(), after.tolist())]
            mode = self.padding_mode
            if mode is None or not isinstance(mode, str) or mode == "constant":
                value = 0 if mode in (None, "constant") else mode
                patch = np.pad(patch, widths, mode="constant", constant_values=value)
            else:
                patch = np.pad(patch, widths, mode=mode)
        return np.ascontiguousarray(patch)

    def _open(self):
        """This process's handle on the store (opened again after a fork)."""
        if self._file is None or self._pid != os.getpid():
            self._file = open_hdf5(self.path)
            self._pid = os.getpid()
            self._draws.clear()
        return self._file

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"], state["_pid"], state["_draws"] = None, None, OrderedDict()
        return state

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None


__all__ = ["VolumeDataset"]
