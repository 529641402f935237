"""The reference with preprocessing: TorchIO's transforms, sampler and an h5py writer.

    python bench/torchio_preprocess_extract.py MANIFEST OUTPUT.h5 PATCHES PATCH_SIZE \\
        [--workers N]

What a TorchIO user writes today to pre-extract preprocessed patches:
``tio.SubjectsDataset(subjects, transform=tio.Compose([ToCanonical, Resample(1.5),
ZNormalization(masking_method="seg"), RescaleIntensity((-1, 1), percentiles=(0.5, 99.5))]))``,
then ``tio.LabelSampler`` on each preprocessed subject (``seg``, classes 1, 2 and 3
equally likely), every patch written with h5py, one by one, uncompressed, one chunk
per patch, in the images' dtype (as bench/torchio_extract.py writes them).

``--workers 0`` (the default) loads and transforms each subject in this process;
``--workers N`` does so in a ``torch.utils.data.DataLoader`` with N worker processes
(each loads and transforms whole subjects, which reach this process through shared
memory), which is how a TorchIO user parallelises the preprocessing; sampling and
writing stay in this process, as they must with one output file.

Run as a whole process by bench_preprocess.py, side by side with patchcli on the same
subjects; bench_preprocess.py also imports :func:`preprocessing`,
:func:`label_sampler` and :func:`read_subjects` to time each step in one process.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
import torchio as tio
from torchio_extract import write_patches


def preprocessing() -> tio.Compose:
    """The transforms patchcli's ``preprocess:`` list of bench_preprocess.py names."""
    return tio.Compose(
        [
            tio.ToCanonical(),
            tio.Resample(1.5),
            tio.ZNormalization(masking_method="seg"),
            tio.RescaleIntensity(out_min_max=(-1, 1), percentiles=(0.5, 99.5)),
        ]
    )


def label_sampler(patch: int) -> tio.LabelSampler:
    """Patches centred on ``seg``'s classes 1, 2 and 3, equally likely."""
    return tio.LabelSampler(patch, "seg", label_probabilities={1: 1, 2: 1, 3: 1})


def read_subjects(manifest: Path) -> list[tio.Subject]:
    """The manifest's subjects, not loaded: ``t1`` intensities, ``seg`` and ``mask`` labels."""
    with open(manifest) as stream:
        rows = list(csv.DictReader(stream))
    return [
        tio.Subject(
            t1=tio.ScalarImage(manifest.parent / row["t1"]),
            seg=tio.LabelMap(manifest.parent / row["seg"]),
            mask=tio.LabelMap(manifest.parent / row["mask"]),
        )
        for row in rows
    ]


def _only(batch: list):
    """A batch of one subject, as the subject itself (no collation)."""
    return batch[0]


def preprocessed_subjects(manifest: Path, workers: int):
    """Each subject of the manifest, loaded and preprocessed, in order."""
    dataset = tio.SubjectsDataset(read_subjects(manifest), transform=preprocessing())
    if workers == 0:
        for index in range(len(dataset)):
            yield dataset[index]
        return
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, num_workers=workers, collate_fn=_only
    )
    yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("patches", type=int)
    parser.add_argument("patch_size", type=int)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    args = parser.parse_args()
    torch.manual_seed(0)
    sampler = label_sampler(args.patch_size)
    write_patches(
        args.output,
        (
            patch_subject
            for subject in preprocessed_subjects(args.manifest, args.workers)
            for patch_subject in sampler(subject, args.patches)
        ),
    )


if __name__ == "__main__":
    main()
