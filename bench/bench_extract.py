"""Extraction cost per subject: patchcli against TorchIO + h5py and the machine's limit.

The reference case: subjects of 197x233x189 with three uint8 .nii.gz images
(t1, seg, mask), 150 patches of 64^3 (grid: overlap 16), outputs on tmpfs so
that disk write-back does not drown the CPU cost. Every contender runs as a
whole process, side by side in the same run; a contender's cost per subject
is the marginal one, ``(T(12 subjects) - T(2 subjects)) / 10``, the median over
``--repeats`` rounds (each round runs every contender once per size, back to
back); the speed-up over TorchIO is the median of the rounds' ratios.
Contenders:

- ``patchcli``: its default settings (workers on every available core, lz4);
- ``patchcli none``: the same without compression, the bytes TorchIO writes;
- ``torchio``: bench/torchio_extract.py, TorchIO's sampler and h5py.

The machine's limit for one subject is measured in this process: loading its
three volumes with nibabel, plus writing its patches' bytes once with h5py in
one block (uncompressed, and with lz4), divided by the available cores.

Then peak memory (proportional set size of the whole process tree, sampled
every 20 ms) of ``patchcli uniform`` for 2 and 20 subjects, and for 150 and
1500 patches per subject, written to a PNG with ``--plot``.

    python bench/bench_extract.py --out-json bench/results/extract.json \\
        --plot bench/results/extract-memory.png
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_manifest, write_uint8_subjects  # noqa: E402

from patchcli.workers import available_cores  # noqa: E402

HERE = Path(__file__).resolve().parent
PATCH = 64
PATCHES = 150
SHAPE = (197, 233, 189)
SAMPLERS = ("uniform", "weighted", "label", "grid")


def sampler_keys(sampler: str) -> dict:
    """The config keys that make patchcli sample as bench/torchio_extract.py does."""
    images = {"t1": "intensity", "seg": "label", "mask": "label"}
    if sampler == "weighted":
        return {"images": {**images, "mask": "sampling_map"}, "probability_map": "mask"}
    if sampler == "label":
        return {
            "images": images,
            "label_name": "seg",
            "label_probabilities": {1: 1, 2: 1, 3: 1},
        }
    if sampler == "grid":
        return {"images": images, "patch_overlap": PATCH // 4, "padding_mode": None}
    return {"images": images}


def patchcli_command(work: Path, sampler: str, manifest: Path, compression, patches=PATCHES):
    output = work / f"out-{sampler}-{manifest.stem}-{compression}.h5"
    config = {
        "subjects": str(manifest),
        "patch_size": PATCH,
        "num_patches": patches,
        "seed": 0,
        "output": {"path": str(output)},
        **sampler_keys(sampler),
    }
    if compression is not None:
        config["output"]["compression"] = compression
    path = work / f"{output.stem}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "patchcli", sampler, str(path), "--quiet", "--overwrite"]
    return command, output


def torchio_command(work: Path, sampler: str, manifest: Path):
    output = work / f"tio-{sampler}-{manifest.stem}.h5"
    script = str(HERE / "torchio_extract.py")
    arguments = [sampler, str(manifest), str(output), str(PATCHES), str(PATCH)]
    return [sys.executable, script, *arguments], output


def timed(command: list[str], output: Path) -> float:
    if output.exists():
        output.unlink()  # freeing a big tmpfs file is not the next run's cost
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    output.unlink()
    return seconds


def machine_limit(manifest: Path, patches_per_subject: dict[str, int]) -> dict[str, float]:
    """Load + write once, per subject, over the available cores (see the module docstring)."""
    import hdf5plugin
    import nibabel as nib

    with open(manifest) as stream:
        row = next(csv.DictReader(stream))
    loads = []
    for _ in range(3):
        start = time.perf_counter()
        volumes = [
            np.asanyarray(nib.load(manifest.parent / row[name]).dataobj)
            for name in ("t1", "seg", "mask")
        ]
        loads.append(time.perf_counter() - start)
    load = statistics.median(loads)
    rng = np.random.default_rng(0)
    cores = available_cores()
    limits = {"load s/subject": load, "cores": cores}
    for compression, options in (
        ("none", {}),
        ("lz4", dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))),
    ):
        for sampler, count in patches_per_subject.items():
            blocks = []
            for volume in volumes:
                corners = rng.integers(0, np.array(volume.shape) - PATCH + 1, (count, 3))
                size = PATCH
                patches = [volume[i : i + size, j : j + size, k : k + size] for i, j, k in corners]
                blocks.append(np.ascontiguousarray(np.stack(patches)[:, None]))
            writes = []
            for _ in range(3):
                with tempfile.NamedTemporaryFile(dir="/dev/shm", suffix=".h5") as temporary:
                    start = time.perf_counter()
                    with h5py.File(temporary.name, "w") as file:
                        for index, block in enumerate(blocks):
                            chunks = (1, *block.shape[1:]) if options else None
                            dataset = file.create_dataset(
                                str(index), block.shape, block.dtype, chunks=chunks, **options
                            )
                            dataset[...] = block
                    writes.append(time.perf_counter() - start)
            write = statistics.median(writes)
            limits[f"write {compression} {sampler} s/subject"] = write
            limits[f"limit {compression} {sampler} s/subject"] = (load + write) / cores
    return limits


class PeakMemory:
    """Peak proportional set size (MiB) of a process and its descendants, sampled."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._done = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, index = [self.pid], 0
        while index < len(pids):
            try:
                for task in os.listdir(f"/proc/{pids[index]}/task"):
                    with open(f"/proc/{pids[index]}/task/{task}/children") as stream:
                        pids.extend(int(p) for p in stream.read().split())
            except OSError:
                pass
            index += 1
        return pids

    def _pss(self, pid: int) -> float:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as stream:
                for line in stream:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _watch(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, sum(self._pss(pid) for pid in self._tree()))
            time.sleep(0.02)

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak


def peak_memory(command: list[str], output: Path) -> float:
    if output.exists():
        output.unlink()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    watcher = PeakMemory(process.pid)
    if process.wait() != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    output.unlink()
    return watcher.stop()


def main() -> None:
    global PATCH, PATCHES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs=2, default=(2, 12))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--no-torchio", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-scale", type=int, default=10)
    parser.add_argument("--shape", type=int, nargs=3, default=SHAPE, help="volume shape")
    parser.add_argument("--patch-size", type=int, default=PATCH)
    parser.add_argument("--patches", type=int, default=PATCHES, help="patches per subject")
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--plot", type=Path, help="PNG of peak memory against the run's size")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="inputs and outputs (default: tmpfs)",
    )
    args = parser.parse_args()
    PATCH, PATCHES = args.patch_size, args.patches
    few, many = args.subjects
    scale = args.memory_scale
    work = Path(tempfile.mkdtemp(prefix="patchcli-bench-", dir=args.workdir))
    try:
        most = max(many, 2 * scale if not args.no_memory else many)
        source = write_uint8_subjects(work / "data", most, tuple(args.shape))
        manifests = {n: write_manifest(source, n, work / "data" / f"s{n}.csv") for n in (few, many)}
        contenders = {"patchcli": "default", "patchcli none": "none"}
        if not args.no_torchio:
            contenders["torchio"] = None
        times: dict[tuple, list[float]] = {}
        counts: dict[str, int] = {}
        for _ in range(args.repeats):
            for sampler in args.samplers:
                for name, compression in contenders.items():
                    for n, manifest in manifests.items():
                        if name == "torchio":
                            command, output = torchio_command(work, sampler, manifest)
                        else:
                            level = None if compression == "default" else compression
                            command, output = patchcli_command(work, sampler, manifest, level)
                        if sampler not in counts and name == "patchcli none":
                            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                            with h5py.File(output) as file:
                                counts[sampler] = len(file["locations"]) // n
                        times.setdefault((sampler, name, n), []).append(timed(command, output))
        limits = machine_limit(manifests[few], counts)
        results: dict = {"limits": limits, "per_subject": {}, "patches_per_subject": counts}
        print(
            f"{few} and {many} subjects of {'x'.join(map(str, args.shape))}, 3 uint8 .nii.gz, "
            f"{PATCHES} patches of "
            f"{PATCH}^3 (grid: {counts.get('grid', '-')}), median of {args.repeats}, "
            f"{limits['cores']} cores"
        )
        print(f"  load 3 volumes: {limits['load s/subject']:.3f} s/subject")
        print(f"  {'sampler':<9} {'contender':<14} {'s/subject':>9}  {'vs torchio':>10}  vs limit")
        for sampler in args.samplers:
            # Each repeat's marginal cost, then medians: of the costs, and of the ratios to
            # TorchIO within each repeat (both ran back to back, under the same load).
            marginal = {
                name: [
                    (high - low) / (many - few)
                    for low, high in zip(
                        times[(sampler, name, few)], times[(sampler, name, many)], strict=True
                    )
                ]
                for name in contenders
            }
            row = {name: statistics.median(costs) for name, costs in marginal.items()}
            ratios = {
                name: statistics.median(
                    reference / cost
                    for reference, cost in zip(marginal["torchio"], costs, strict=True)
                )
                for name, costs in marginal.items()
                if "torchio" in marginal and name != "torchio"
            }
            results["per_subject"][sampler] = row
            results.setdefault("speedup_vs_torchio", {})[sampler] = ratios
            for name, cost in row.items():
                faster = f"{ratios[name]:9.2f}x" if name in ratios else ""
                compression = "none" if name in ("patchcli none", "torchio") else "lz4"
                limit = limits[f"limit {compression} {sampler} s/subject"]
                results.setdefault("versus_limit", {}).setdefault(sampler, {})[name] = cost / limit
                print(f"  {sampler:<9} {name:<14} {cost:9.3f}  {faster:>10}  {cost / limit:7.2f}x")
        if not args.no_memory:
            memory = {}
            for label, n, patches in (
                ("2 subjects", 2, PATCHES),
                (f"{2 * scale} subjects", 2 * scale, PATCHES),
                (f"{scale * PATCHES} patches", 2, scale * PATCHES),
            ):
                manifest = write_manifest(source, n, work / "data" / f"m{n}.csv")
                command, output = patchcli_command(work, "uniform", manifest, None, patches)
                memory[label] = peak_memory(command, output)
            results["peak_memory_mib"] = memory
            print("  peak memory (PSS of all processes), patchcli uniform, default settings:")
            for label, mib in memory.items():
                print(f"    {label:<14} {mib:7.0f} MiB")
            if args.plot:
                plot_memory(memory, args.plot)
        if args.out_json:
            args.out_json.parent.mkdir(parents=True, exist_ok=True)
            args.out_json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def plot_memory(memory: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3))
    labels = list(memory)
    axis.bar(labels, [memory[label] for label in labels], color="#4c72b0")
    axis.set_ylabel("peak memory (MiB)")
    axis.set_title("patchcli uniform: peak memory against run size")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
