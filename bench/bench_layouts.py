"""Resolving large datasets in standard layouts: a BIDS dataset and an nnU-Net dataset.

The BIDS dataset has ``--participants`` participants, each with two raw images (T1w
and FLAIR, with JSON sidecars) and a brain mask in ``derivatives/seg``; the nnU-Net
dataset has as many cases with two channels and a segmentation. Files are empty: only
names are read. Both are built in a temporary folder (in ``/dev/shm`` when it exists),
then resolved ``--repeats`` times; the median is printed, in seconds.

Side by side, when pybids is installed: pybids' ``BIDSLayout`` (its SQL index, with
derivatives) and one ``get`` per image, the way a script finds the same files, on a
dataset of ``--pybids-participants`` (its time grows with the dataset; 10,000 would
take minutes), and patchcli on that same dataset.

    python bench/bench_layouts.py
    python bench/bench_layouts.py --participants 1000 --out-json bench/results/layouts.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from patchcli.layouts import resolve_bids, resolve_nnunet

IMAGES = {
    "t1": {"type": "intensity", "bids": {"suffix": "T1w", "datatype": "anat"}},
    "flair": {"type": "intensity", "bids": {"suffix": "FLAIR", "datatype": "anat"}},
    "mask": {"type": "label", "bids": {"suffix": "mask", "scope": "seg", "desc": "brain"}},
}


def _touch(folder: str, names: list[str]) -> None:
    os.makedirs(folder, exist_ok=True)
    for name in names:
        with open(os.path.join(folder, name), "wb") as stream:
            if name.endswith(".json"):  # sidecars: valid JSON (pybids reads them)
                stream.write(b"{}")


def build_bids(root: Path, participants: int) -> Path:
    """A BIDS dataset of empty files, with one derivative pipeline."""
    root.mkdir(parents=True)
    raw = {"Name": "bench", "BIDSVersion": "1.8.0"}
    (root / "dataset_description.json").write_text(json.dumps(raw))
    (root / "derivatives/seg").mkdir(parents=True)
    derivative = {
        **raw,
        "Name": "seg",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "seg"}],
    }
    (root / "derivatives/seg/dataset_description.json").write_text(json.dumps(derivative))
    for number in range(1, participants + 1):
        sub = f"sub-{number:05d}"
        _touch(
            str(root / sub / "anat"),
            [f"{sub}_T1w.nii.gz", f"{sub}_T1w.json", f"{sub}_FLAIR.nii.gz", f"{sub}_FLAIR.json"],
        )
        _touch(str(root / "derivatives/seg" / sub / "anat"), [f"{sub}_desc-brain_mask.nii.gz"])
    return root


def build_nnunet(root: Path, cases: int) -> Path:
    """An nnU-Net v2 raw dataset of empty files."""
    root.mkdir(parents=True)
    description = {
        "channel_names": {"0": "T1", "1": "FLAIR"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(description))
    names = [f"case_{n:05d}_{c:04d}.nii.gz" for n in range(cases) for c in range(2)]
    _touch(str(root / "imagesTr"), names)
    _touch(str(root / "labelsTr"), [f"case_{n:05d}.nii.gz" for n in range(cases)])
    return root


def _median_seconds(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _pybids_side_by_side(work: Path, count: int, repeats: int) -> dict[str, float]:
    """pybids and patchcli on one BIDS dataset of ``count`` participants ({} without pybids)."""
    try:
        import bids
    except ImportError:
        print("pybids is not installed: no side-by-side (pip install pybids)")
        return {}
    root = build_bids(work / "bids-small", count)

    def with_pybids():
        layout = bids.BIDSLayout(root, derivatives=True, validate=False)
        found = {}
        for name, spec in IMAGES.items():
            entities = {k: v for k, v in spec["bids"].items() if k != "scope"}
            scope = spec["bids"].get("scope", "raw")
            files = layout.get(scope=scope, extension=".nii.gz", return_type="filename", **entities)
            found[name] = len(files)
        return found

    results = {}
    seconds, found = _median_seconds(with_pybids, repeats)
    assert all(number == count for number in found.values()), found
    results[f"pybids {bids.__version__}, bids, {count} participants, 3 images"] = seconds
    seconds, resolved = _median_seconds(lambda: resolve_bids(root, IMAGES), repeats)
    assert len(resolved.subjects) == count
    results[f"bids, {count} participants, 3 images"] = seconds
    return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out-json", type=Path, default=None)
    parser.add_argument("--pybids-participants", type=int, default=1000)
    options = parser.parse_args(argv)
    default_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="bench_layouts_", dir=options.workdir or default_dir))
    try:
        count = options.participants
        start = time.perf_counter()
        bids = build_bids(work / "bids", count)
        nnunet = build_nnunet(work / "nnunet", count)
        print(f"built both datasets in {time.perf_counter() - start:.1f} s in {work}")
        results = {}
        seconds, resolved = _median_seconds(lambda: resolve_bids(bids, IMAGES), options.repeats)
        assert len(resolved.subjects) == count, len(resolved.subjects)
        results[f"bids, {count} participants, 3 images"] = seconds
        seconds, resolved = _median_seconds(lambda: resolve_nnunet(nnunet), options.repeats)
        assert len(resolved.subjects) == count, len(resolved.subjects)
        results[f"nnunet, {count} cases, 2 channels + label"] = seconds
        results.update(_pybids_side_by_side(work, options.pybids_participants, options.repeats))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, seconds in results.items():
        print(f"{name}: {seconds:.3f} s (median of {options.repeats})")
    if options.out_json:
        options.out_json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
