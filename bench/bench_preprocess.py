"""Preprocessing then extraction, per subject: patchcli's ``preprocess:`` against TorchIO.

The reference case: MNI-sized subjects (197x233x189, 1 mm) of three .nii.gz images
in float32 with an LPS+ affine, so that ``ToCanonical`` flips two axes: ``t1`` (a
smooth phantom with a bias field and Rician noise), ``seg`` (labels 0 to 3:
background, head, brain, lesions) and ``mask`` (the brain). Every subject is
preprocessed with ToCanonical, Resample to 1.5 mm, ZNormalization inside ``seg`` and
RescaleIntensity to [-1, 1] between the 0.5th and 99.5th percentiles (131x155x126
voxels after resampling), then 150 patches of 48^3 are drawn by the label sampler
(``seg``'s classes 1, 2 and 3 equally likely) and written, inputs and outputs on
tmpfs so that disk write-back does not drown the CPU cost.

Every contender runs as a whole process, side by side in the same run; a
contender's cost per subject is the marginal one, ``(T(12 subjects) - T(2
subjects)) / 10``, the median over ``--repeats`` rounds (each round runs every
contender once per size, back to back); the speed-up over TorchIO is the median of
the rounds' ratios to the faster TorchIO setting (the lower median). Beside the
wall-clock time, each contender's marginal CPU time per subject (its worker
processes' included), and the largest share of the machine that other processes
used during its runs (from /proc/stat: a shared machine disturbs timings; beyond 10 %
a warning says so). Contenders:

- ``patchcli``: ``python -m patchcli label CONFIG`` with its default settings
  (workers on every available core, lz4);
- ``patchcli none``: the same with ``compression: none``, the bytes TorchIO writes;
- ``torchio``: bench/torchio_preprocess_extract.py, ``tio.SubjectsDataset`` with the
  ``tio.Compose`` of the same transforms, ``tio.LabelSampler`` and h5py, loading and
  preprocessing in the main process;
- ``torchio loader N``: the same with a ``DataLoader`` of N worker processes
  (``--torchio-workers``, default 0 and the available cores) loading and
  preprocessing whole subjects, as a TorchIO user parallelises it.

Then where a subject's time goes, measured in this process, one step after the other
on the same subjects (the median over ``--repeats`` passes over the first
``--subjects`` ones): for patchcli, loading, each transform, the C-ordered copy in
the output dtype, drawing the locations, cropping, compressing with lz4 (in its
workers) or writing in place (uncompressed); for TorchIO, loading, the copy
``Compose`` makes, each transform (each copies the subject first), sampling with
cropping, and writing with h5py. SimpleITK's resampler uses every core in both.

    python bench/bench_preprocess.py --out-json bench/results/preprocess.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_lps_subjects, write_manifest  # noqa: E402

from patchcli.workers import available_cores  # noqa: E402

HERE = Path(__file__).resolve().parent
SHAPE = (197, 233, 189)
PATCH = 48
PATCHES = 150
TARGET = 2.5
#: Beyond this share of the machine used by other processes, a timing is flagged.
NOISY = 0.10
PREPROCESS = [
    "ToCanonical",
    {"Resample": 1.5},
    {"ZNormalization": {"masking_method": "seg"}},
    {"RescaleIntensity": {"out_min_max": [-1, 1], "percentiles": [0.5, 99.5]}},
]
LABEL_PROBABILITIES = {1: 1, 2: 1, 3: 1}
#: patchcli's steps that hand a block to the writer, one or the other.
OUTPUT_STEPS = ("compress lz4", "write none")


def patchcli_config(
    work: Path, manifest: Path, compression: str | None, patch: int, patches: int
) -> tuple[Path, Path]:
    """A config file for ``patchcli label`` and its output's path."""
    output = work / f"out-{manifest.stem}-{compression or 'default'}.h5"
    config = {
        "subjects": str(manifest),
        "images": {"t1": "intensity", "seg": "label", "mask": "label"},
        "preprocess": PREPROCESS,
        "patch_size": patch,
        "num_patches": patches,
        "label_name": "seg",
        "label_probabilities": LABEL_PROBABILITIES,
        "seed": 0,
        "output": {"path": str(output)},
    }
    if compression is not None:
        config["output"]["compression"] = compression
    path = work / f"{output.stem}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, output


def contender_command(
    name: str, work: Path, manifest: Path, patch: int, patches: int
) -> tuple[list[str], Path]:
    """The command line of contender ``name`` on ``manifest``, and its output's path."""
    if name.startswith("patchcli"):
        compression = "none" if name == "patchcli none" else None
        config, output = patchcli_config(work, manifest, compression, patch, patches)
        command = [sys.executable, "-m", "patchcli", "label", str(config), "--quiet"]
        return [*command, "--overwrite"], output
    workers = int(name.rsplit(" ", 1)[1]) if name.startswith("torchio loader") else 0
    output = work / f"tio-{manifest.stem}-{workers}.h5"
    script = str(HERE / "torchio_preprocess_extract.py")
    arguments = [str(manifest), str(output), str(patches), str(patch), "--workers", str(workers)]
    return [sys.executable, script, *arguments], output


class OtherLoad:
    """The share of the machine's CPU time used by other processes while watched.

    The machine's busy time (/proc/stat, every core, the hypervisor's steal
    included) less this process's and its waited-for descendants' CPU time, over
    the wall-clock time times the cores: 0 on an otherwise idle machine. A timing
    taken under a share of more than a few percent is disturbed.
    """

    def __init__(self) -> None:
        self._start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float]:
        with open("/proc/stat") as stream:
            fields = [int(value) for value in stream.readline().split()[1:9]]
        user, nice, system, _, _, irq, softirq, steal = fields
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        own = sum(
            usage.ru_utime + usage.ru_stime
            for usage in (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
        )
        return time.perf_counter(), busy, own

    def share(self) -> float:
        """Since this object was made; also restarts the watch."""
        end = self._snapshot()
        (start, busy, own), self._start = self._start, end
        wall = max(end[0] - start, 1e-9)
        return max(0.0, (end[1] - busy) - (end[2] - own)) / (wall * (os.cpu_count() or 1))


def children_cpu() -> float:
    """CPU seconds (user and system) of this process's waited-for descendants so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], output: Path, patches: int) -> dict[str, float]:
    """A whole process's wall-clock seconds, its CPU seconds (its workers' included), and
    the share of the machine other processes used meanwhile (:class:`OtherLoad`).

    Its output, checked to hold ``patches`` patches, is removed afterwards.
    """
    if output.exists():
        output.unlink()  # freeing a big tmpfs file is not the next run's cost
    cpu = children_cpu()
    other = OtherLoad()
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    share = other.share()
    cpu = children_cpu() - cpu
    with h5py.File(output, "r") as file:
        written = len(file["locations"])
    if written != patches:
        raise SystemExit(f"{' '.join(command)}: {written} patches written, not {patches}")
    output.unlink()
    return {"wall": seconds, "cpu": cpu, "other load": share}


class Steps:
    """Seconds of named steps, several samples each; :meth:`medians` summarises them."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self._start = 0.0

    def start(self) -> None:
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        """Record the time since :meth:`start` or the previous lap as step ``name``."""
        now = time.perf_counter()
        self.samples.setdefault(name, []).append(now - self._start)
        self._start = now

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(values) for name, values in self.samples.items()}


def patchcli_breakdown(config: Path, passes: int, work: Path) -> dict[str, float]:
    """patchcli's steps for each subject of ``config``, in this process (see the docstring).

    Returns
    -------
    dict
        Step name -> median seconds per subject, then ``total lz4`` (every step but
        the uncompressed write) and ``total none`` (every step but the compression).
    """
    from patchcli.config import load_config
    from patchcli.handover import compress_chunks
    from patchcli.io.hdf5 import compression_options, filter_pipeline
    from patchcli.plan import patches_per_block, plan_extraction
    from patchcli.sampling import subject_rng
    from patchcli.subject_work import Buffers, cast_volume, crop_block, subject_locations
    from patchcli.subjects import load_subject
    from patchcli.transforms import Image, Subject

    plan = plan_extraction(load_config(config), "label")
    settings = plan.settings
    block = patches_per_block(plan)
    with h5py.File("filters", "w", driver="core", backing_store=False) as file:
        dataset = file.create_dataset(
            "lz4", (1, 8), np.float32, chunks=(1, 8), **compression_options("lz4")
        )
        filters = filter_pipeline(dataset)
    buffers = Buffers()
    steps = Steps()
    target = work / "breakdown-patchcli.bin"
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for _ in range(passes):
            for spec, count in zip(plan.subjects, plan.counts, strict=True):
                steps.start()
                loaded = load_subject(spec, settings.reader, settings.tolerance, same_grid=False)
                steps.lap("load")
                images = {
                    name: Image(
                        name, kind, loaded.volumes[name], loaded.affines[name], spec.paths[name]
                    )
                    for name, kind in settings.image_types.items()
                }
                subject = Subject(spec.id, images)
                for transform in settings.transforms:
                    transform.apply(subject)
                    steps.lap(transform.name)
                volumes = {}
                for image in subject:
                    dtype = np.dtype(settings.output_dtypes[image.name])
                    out = buffers.get(f"volume {image.name}", image.data.shape, dtype)
                    volumes[image.name] = cast_volume(image.data, dtype, image.path, out)
                steps.lap("C-ordered copy")
                rng = subject_rng(settings.seed, spec.index)
                locations = subject_locations(settings, volumes, rng)
                blocks = [
                    locations.take(min(block, count - first)).tolist()
                    for first in range(0, count, block)
                ]
                steps.lap("sampling")
                crop = compress = write = 0.0
                offset = 0
                for corners in blocks:
                    start = time.perf_counter()
                    rows = {}
                    for name, volume in volumes.items():
                        shape = (block, volume.shape[0], *settings.patch_size)
                        rows[name] = buffers.get(f"block {name}", shape, volume.dtype)
                        rows[name] = rows[name][: len(corners)]
                    crop_block(volumes, corners, rows)
                    crop += time.perf_counter() - start
                    start = time.perf_counter()
                    for rows_of_image in rows.values():
                        compress_chunks(rows_of_image, filters)
                    compress += time.perf_counter() - start
                    start = time.perf_counter()
                    for rows_of_image in rows.values():
                        data = memoryview(rows_of_image).cast("B")
                        offset += os.pwrite(descriptor, data, offset)
                    write += time.perf_counter() - start
                steps.samples.setdefault("crop", []).append(crop)
                steps.samples.setdefault("compress lz4", []).append(compress)
                steps.samples.setdefault("write none", []).append(write)
    finally:
        os.close(descriptor)
        target.unlink()
    medians = steps.medians()
    common = sum(seconds for step, seconds in medians.items() if step not in OUTPUT_STEPS)
    medians["total lz4"] = common + medians["compress lz4"]
    medians["total none"] = common + medians["write none"]
    return medians


def torchio_breakdown(manifest: Path, passes: int, work: Path, patch: int, patches: int):
    """TorchIO's steps for each subject of ``manifest``, in this process (see the docstring).

    Returns
    -------
    dict
        Step name -> median seconds per subject, then ``total``.
    """
    import torch
    import torchio as tio
    from torchio_extract import IMAGES
    from torchio_preprocess_extract import label_sampler, preprocessing, read_subjects

    torch.manual_seed(0)
    compose = preprocessing()
    sampler = label_sampler(patch)
    subjects = read_subjects(manifest)
    steps = Steps()
    for _ in range(passes):
        for unloaded in subjects:
            steps.start()
            subject = copy.deepcopy(unloaded)  # as tio.SubjectsDataset.__getitem__
            subject.load()
            steps.lap("load")
            subject = copy.deepcopy(subject)
            steps.lap("copy (Compose)")
            for transform in compose.transforms:
                subject = transform(subject)
                steps.lap(transform.name)
            crops = list(sampler(subject, patches))
            steps.lap("sampling + crop")
            with h5py.File(work / "breakdown-torchio.h5", "w") as file:
                for name in IMAGES:
                    data = crops[0][name].data.numpy()
                    shape = (len(crops), *data.shape)
                    dataset = file.create_dataset(
                        f"patches/{name}", shape, data.dtype, chunks=(1, *data.shape)
                    )
                    for row, crop in enumerate(crops):
                        dataset[row] = crop[name].data.numpy()
                file["locations"] = np.stack([crop[tio.LOCATION].numpy() for crop in crops])
            steps.lap("write")
            del crops, subject
    (work / "breakdown-torchio.h5").unlink()
    medians = steps.medians()
    medians["total"] = sum(medians.values())
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs=2, default=(2, 12))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=SHAPE, help="volume shape")
    parser.add_argument("--patch-size", type=int, default=PATCH)
    parser.add_argument("--patches", type=int, default=PATCHES, help="patches per subject")
    parser.add_argument(
        "--torchio-workers",
        type=int,
        nargs="+",
        help="DataLoader worker processes for TorchIO, 0: the main process "
        "(default: 0 and the available cores)",
    )
    parser.add_argument("--label-dtype", default="float32", help="dtype of seg and mask files")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--out-json", type=Path)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="inputs and outputs (default: tmpfs)",
    )
    args = parser.parse_args()
    few, many = args.subjects
    if not 0 < few < many:
        parser.error("--subjects A B needs 0 < A < B")
    cores = available_cores()
    workers = args.torchio_workers if args.torchio_workers is not None else [0, cores]
    torchio_names = [
        "torchio" if count == 0 else f"torchio loader {count}" for count in dict.fromkeys(workers)
    ]
    contenders = ["patchcli", "patchcli none", *torchio_names]
    work = Path(tempfile.mkdtemp(prefix="patchcli-bench-", dir=args.workdir))
    try:
        source = write_lps_subjects(work / "data", many, tuple(args.shape), args.label_dtype)
        manifests = {n: write_manifest(source, n, work / "data" / f"s{n}.csv") for n in (few, many)}
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeats):
            for name in contenders:
                for n, manifest in manifests.items():
                    command, output = contender_command(
                        name, work, manifest, args.patch_size, args.patches
                    )
                    times.setdefault((name, n), []).append(timed(command, output, n * args.patches))
        # Each round's marginal cost, then medians: of the costs, and of the ratios to
        # TorchIO within each round (every contender ran back to back, under the same load).
        marginal, cpu, other = {}, {}, {}
        for name in contenders:
            runs = list(zip(times[(name, few)], times[(name, many)], strict=True))
            marginal[name] = [(high["wall"] - low["wall"]) / (many - few) for low, high in runs]
            cpu[name] = [(high["cpu"] - low["cpu"]) / (many - few) for low, high in runs]
            other[name] = max(run["other load"] for pair in runs for run in pair)
        per_subject = {name: statistics.median(costs) for name, costs in marginal.items()}
        cpu_per_subject = {name: statistics.median(costs) for name, costs in cpu.items()}
        best = min(torchio_names, key=per_subject.__getitem__)
        ratios = {
            reference: {
                name: statistics.median(
                    slow / fast for slow, fast in zip(marginal[reference], marginal[name])
                )
                for name in ("patchcli", "patchcli none")
            }
            for reference in torchio_names
        }
        results: dict = {
            "setup": {
                "shape": list(args.shape),
                "subjects": [few, many],
                "repeats": args.repeats,
                "patch_size": args.patch_size,
                "patches_per_subject": args.patches,
                "cores": cores,
                "preprocess": PREPROCESS,
                "label_probabilities": LABEL_PROBABILITIES,
                "label_dtype": args.label_dtype,
            },
            "per_subject": per_subject,
            "cpu_per_subject": cpu_per_subject,
            "rounds": marginal,
            "cpu_rounds": cpu,
            "max_other_load": other,
            "torchio_best": best,
            "speedup_vs_torchio": ratios[best],
            "speedup_vs_each_torchio": ratios,
            "target_speedup": TARGET,
        }
        print(
            f"{few} and {many} subjects of {'x'.join(map(str, args.shape))}, 3 float32 "
            f".nii.gz (LPS), ToCanonical + Resample 1.5 + ZNormalization + RescaleIntensity, "
            f"label sampler: {args.patches} patches of {args.patch_size}^3, "
            f"median of {args.repeats}, {cores} cores"
        )
        print(
            f"  {'contender':<18} {'s/subject':>9}  {'cpu s/subject':>13}  {'other load':>10}  "
            f"vs {best}"
        )
        for name in contenders:
            faster = f"{ratios[best][name]:.2f}x" if name in ratios[best] else ""
            mark = "(best TorchIO)" if name == best else ""
            print(
                f"  {name:<18} {per_subject[name]:9.3f}  {cpu_per_subject[name]:13.3f}  "
                f"{other[name]:10.0%}  {faster}{mark}"
            )
        speedup = ratios[best]["patchcli"]
        if speedup >= TARGET:
            verdict = "reached"
        elif speedup > 0:
            verdict = f"missed: {TARGET / speedup:.2f}x short"
        else:
            verdict = "not measurable (negative marginal cost: too little work per subject)"
        print(f"  target {TARGET}x (patchcli, lz4): {verdict}")
        if max(other.values()) > NOISY:
            print(
                f"  warning: other processes used up to {max(other.values()):.0%} of the "
                "machine during these runs: the timings are disturbed"
            )
        if not args.no_breakdown:
            config, _ = patchcli_config(work, manifests[few], None, args.patch_size, args.patches)
            watch = OtherLoad()
            results["breakdown"] = {
                "patchcli": patchcli_breakdown(config, args.repeats, work),
                "torchio": torchio_breakdown(
                    manifests[few], args.repeats, work, args.patch_size, args.patches
                ),
            }
            results["breakdown_other_load"] = share = watch.share()
            print(
                "  one subject in one process, s (median over the first subjects' passes; "
                f"other load {share:.0%}):"
            )
            for contender, steps in results["breakdown"].items():
                print(f"    {contender}")
                for step, seconds in steps.items():
                    print(f"      {step:<18} {seconds:7.3f}")
        if args.out_json:
            args.out_json.parent.mkdir(parents=True, exist_ok=True)
            args.out_json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
