"""Run an extraction on a SLURM cluster: an array job of shards, then a merge job.

:func:`plan_submission` checks the config and every input's header (the
checks a run makes, in seconds, on the login node), finds which shards are
already complete, and writes the text of two sbatch scripts:

- ``array.sbatch``: ``--array`` over the shards still to do, each task
  running ``patchcli COMMAND CONFIG --shard auto --resume`` as a job step
  (``srun``), so that ``scancel --signal=TERM``, ``--signal`` and the time
  limit reach it and it stops cleanly, keeping its complete subjects;
- ``merge.sbatch``: ``patchcli merge OUTPUT``, submitted with
  ``--dependency=afterok:<array job>``.

:func:`submit` writes them into ``<output>.slurm/`` with a snapshot of the
resolved config (so that editing the config while tasks wait cannot split
the run) and submits them with ``sbatch``. :func:`wait` follows the jobs to
their end and names the tasks that failed, with the tail of their logs.
Submitting again runs only the shards still missing, plus the merge.

SLURM is the engine: patchcli writes scripts and calls ``sbatch``,
``squeue`` and ``scancel``, and never schedules anything itself.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config, load_config
from .errors import ConfigError, DataError, PatchcliError
from .plan import RUNS, plan_extraction
from .repair import RunStatus, run_status
from .shards import SHARD_COUNT_VARIABLE, Shard, shard_output_path, slurm_folder

#: Job states in which a job may still run (squeue's long names).
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "CONFIGURING",
        "COMPLETING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "SUSPENDED",
    }
)
#: Reasons a pending job will never start.
NEVER_STARTS = ("DependencyNeverSatisfied", "InvalidDependency")


class SlurmError(PatchcliError):
    """sbatch, squeue or scancel failed, or a job ended without its output."""


@dataclass(frozen=True)
class SlurmOptions:
    """What the cluster needs to know about the jobs (``#SBATCH`` lines).

    ``sbatch_options`` are passed through verbatim (``"--qos=long"``,
    ``"--constraint=skylake"``), after the others.
    """

    partition: str | None = None
    time: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    account: str | None = None
    max_parallel: int | None = None
    sbatch_options: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        named = {
            "partition": self.partition,
            "time": self.time,
            "cpus-per-task": self.cpus_per_task,
            "mem": self.mem,
            "account": self.account,
        }
        lines = [f"#SBATCH --{key}={value}" for key, value in named.items() if value is not None]
        for option in self.sbatch_options:
            if "\n" in option:
                raise ConfigError(f"--sbatch-option {option!r} spans several lines")
            lines.append(f"#SBATCH {option}")
        return lines


@dataclass
class SubmitPlan:
    """What :func:`submit` will do: the shards to run, and the scripts."""

    command: str
    config: Config
    output: Path
    folder: Path
    shards: int
    todo: list[int]
    merge: bool
    scripts: dict[str, str] = field(default_factory=dict)
    #: Run the shards that skipped subjects again (``--retry-skipped``).
    retry_skipped: bool = False
    #: The merged output exists and is made again (its shards changed).
    replace_merge: bool = False
    #: Each shard's state when planned (patchcli.repair).
    status: RunStatus | None = None

    @property
    def config_snapshot(self) -> Path:
        return self.folder / "config.yaml"

    def log(self, index: int | None) -> Path:
        return self.folder / ("merge.log" if index is None else f"shard-{index}.log")

    def shard_output(self, index: int) -> Path:
        return shard_output_path(self.output, Shard(index, self.shards), self._nifti)

    @property
    def _nifti(self) -> bool:
        return self.config.output.format == "nifti"


@dataclass(frozen=True)
class Submission:
    """The jobs submitted: ids are None for a part that had nothing to do."""

    plan: SubmitPlan
    array_job: str | None
    merge_job: str | None

    @property
    def job_ids(self) -> list[str]:
        return [job for job in (self.array_job, self.merge_job) if job]


@dataclass(frozen=True)
class FailedTask:
    shard: int | None  # None: the merge job
    log: Path
    tail: str


@dataclass(frozen=True)
class WaitResult:
    ok: bool
    failed: list[FailedTask]


# ----------------------------------------------------------------- planning
def plan_submission(
    command: str,
    config_path: str | os.PathLike,
    shards: int,
    options: SlurmOptions | None = None,
    overrides: Mapping | None = None,
    retry_skipped: bool = False,
) -> SubmitPlan:
    """Check the run and every input's header, and prepare the scripts.

    The shards to run are those missing, failed (a ``.partial`` only) or stale (their
    own manifest rows changed since they were made; patchcli.repair), and with
    ``retry_skipped`` those that skipped subjects; the merge is made (again) when any
    shard runs or the merged output is not that of the current shards.

    Raises
    ------
    ConfigError, DataError
        What the run itself would raise, before anything is submitted.
    """
    if command not in RUNS:
        raise ConfigError(f"unknown command {command!r}; use one of {', '.join(RUNS)}")
    if shards < 1:
        raise ConfigError(f"--shards must be at least 1, not {shards}")
    options = options or SlurmOptions()
    if options.max_parallel is not None and options.max_parallel < 1:
        raise ConfigError("--max-parallel must be at least 1")
    config = load_config(config_path, {**(overrides or {}), "shard": None})
    config = config.model_copy(update={"shard": None, "workers": "auto"})
    whole = plan_extraction(config, command)  # every header, as a run checks them
    Shard(0, shards).rows(whole.total_subjects)  # no more shards than subjects
    output = whole.output_path.resolve()
    plan = SubmitPlan(
        command=command,
        config=config,
        output=output,
        folder=slurm_folder(output),
        shards=shards,
        todo=[],
        merge=True,
        retry_skipped=retry_skipped,
    )
    plan.status = run_status(config, command, whole.manifest, output, shards)
    plan.todo, plan.merge = _remaining_work(plan, plan.status)
    plan.scripts = {
        "array.sbatch": _array_script(plan, options) if plan.todo else "",
        "merge.sbatch": _merge_script(plan, options) if plan.merge else "",
    }
    return plan


def _remaining_work(plan: SubmitPlan, status: RunStatus) -> tuple[list[int], bool]:
    """The shards to run and whether to merge; refuses outputs of other settings in the way."""
    merged = status.merged
    retried = plan.retry_skipped and any(shard.state == "skipped" for shard in status.shards)
    if merged == "current" or (merged == "skipped" and not retried):
        return [], False
    if merged == "foreign":
        raise DataError(
            f"{plan.output}: exists and was not made with this run's settings (another "
            "sampler, seed, preprocessing, ...); move it away first"
        )
    foreign = [shard.path.name for shard in status.foreign]
    if foreign:
        raise DataError(
            f"{plan.output}: shards made with other settings are in the way "
            f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); move them away, "
            "or submit to another output"
        )
    # A merge made before (of stale shards, or with skips being retried) is replaced.
    plan.replace_merge = merged != "missing"
    return status.to_run(plan.retry_skipped), True


def array_range(indices: Sequence[int]) -> str:
    """``0-15`` for a full range, ``3,7,9-11`` otherwise."""
    parts, start = [], None
    for position, index in enumerate(indices):
        if start is None:
            start = index
        following = indices[position + 1] if position + 1 < len(indices) else None
        if following != index + 1:
            parts.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return ",".join(parts)


def _patchcli(arguments: Sequence[str]) -> str:
    # This interpreter: the same install on the compute nodes (a shared file system).
    return shlex.join([sys.executable, "-m", "patchcli", *arguments])


def _header(plan: SubmitPlan, options: SlurmOptions, name: str, log: str) -> list[str]:
    return [
        "#!/bin/bash",
        f"# Written by patchcli submit for {plan.output}",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --output={log}",
        "#SBATCH --open-mode=append",
        *options.lines(),
    ]


def _array_script(plan: SubmitPlan, options: SlurmOptions) -> str:
    array = array_range(plan.todo)
    if options.max_parallel:
        array += f"%{options.max_parallel}"
    lines = _header(
        plan,
        options,
        f"patchcli-{plan.command}-{plan.output.name}",
        str(plan.folder / "shard-%a.log"),
    )
    lines.insert(3, f"#SBATCH --array={array}")
    again = ["--retry-skipped"] if plan.retry_skipped else ["--resume"]
    task = _patchcli(
        [plan.command, str(plan.config_snapshot), "--shard", "auto", *again, "--quiet"]
    )
    lines += [
        "",
        "# One shard per task: the array index is the shard index (resubmissions run",
        "# only the missing, failed and stale ones). --resume continues a task stopped at",
        "# its time limit or preempted, does nothing for a shard already complete, and runs",
        "# again a shard whose manifest rows changed (--retry-skipped: or that skipped some).",
        f"export {SHARD_COUNT_VARIABLE}={plan.shards}",
        'echo "$(date -Is) shard $SLURM_ARRAY_TASK_ID of $PATCHCLI_SHARD_COUNT on $(hostname)"',
        "# A job step (srun), so that scancel --signal=TERM and --signal reach patchcli;",
        "# workers follow SLURM_CPUS_PER_TASK (the config snapshot says workers: auto).",
        f'exec srun --ntasks=1 --cpus-per-task="${{SLURM_CPUS_PER_TASK:-1}}" {task}',
        "",
    ]
    return "\n".join(lines)


def _merge_script(plan: SubmitPlan, options: SlurmOptions) -> str:
    merge_options = SlurmOptions(
        partition=options.partition,
        time=options.time,
        account=options.account,
        sbatch_options=options.sbatch_options,
    )
    lines = _header(plan, merge_options, f"patchcli-merge-{plan.output.name}", str(plan.log(None)))
    replace = ["--overwrite"] if plan.replace_merge else []
    merge = ["merge", str(plan.output), "--config", str(plan.config_snapshot), "--quiet", *replace]
    lines += [
        "",
        "# Submitted with --dependency=afterok:<array job> --kill-on-invalid-dep=yes:",
        "# it runs once every shard succeeded, and is cancelled if one failed.",
        'echo "$(date -Is) merge on $(hostname)"',
        f"exec {_patchcli(merge)}",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------- submitting
def _run(arguments: Sequence[str], allow: str | None = None) -> str:
    """Run a SLURM command; its output, or "" when it fails with the message ``allow``."""
    program = arguments[0]
    if shutil.which(program) is None:
        raise SlurmError(f"{program}: not found; submit from a SLURM login node (or dry-run)")
    result = subprocess.run(list(arguments), capture_output=True, text=True, check=False)
    if result.returncode != 0 and allow and allow in result.stderr:
        return ""
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise SlurmError(
            f"{shlex.join(arguments)} failed: {reason[-1] if reason else result.returncode}"
        )
    return result.stdout


def _job_id(text: str) -> str:
    # --parsable prints "id" or "id;cluster".
    return text.strip().split(";")[0]


def submit(plan: SubmitPlan) -> Submission:
    """Write the scripts and the config snapshot, and submit what is left to do.

    Raises
    ------
    SlurmError
        When jobs of an earlier submission for this output are still queued or
        running, or sbatch fails.
    """
    if not plan.todo and not plan.merge:
        return Submission(plan, None, None)
    _refuse_if_running(plan)
    plan.folder.mkdir(parents=True, exist_ok=True)
    temporary = plan.config_snapshot.with_suffix(".yaml.partial")
    temporary.write_text(
        "# The config this run was submitted with, paths resolved (patchcli submit).\n"
        + plan.config.to_yaml(),
        encoding="utf-8",
    )
    temporary.replace(plan.config_snapshot)
    for name, text in plan.scripts.items():
        if text:
            (plan.folder / name).write_text(text, encoding="utf-8")
    array_job = None
    if plan.todo:
        array_job = _job_id(_run(["sbatch", "--parsable", str(plan.folder / "array.sbatch")]))
    dependency = [f"--dependency=afterok:{array_job}", "--kill-on-invalid-dep=yes"]
    merge_job = _job_id(
        _run(
            [
                "sbatch",
                "--parsable",
                *(dependency if array_job else []),
                str(plan.folder / "merge.sbatch"),
            ]
        )
    )
    record = {
        "array_job": array_job,
        "merge_job": merge_job,
        "shards": plan.todo,
        "submitted": time.time(),
    }
    (plan.folder / "jobs.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return Submission(plan, array_job, merge_job)


def _refuse_if_running(plan: SubmitPlan) -> None:
    record = plan.folder / "jobs.json"
    try:
        jobs = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    ids = [str(jobs.get(key)) for key in ("array_job", "merge_job") if jobs.get(key)]
    active = [job for job, (state, _) in job_states(ids).items() if state in ACTIVE_STATES]
    if active:
        raise SlurmError(
            f"{plan.output}: jobs {', '.join(sorted(set(j.split('_')[0] for j in active)))} "
            "of an earlier submission are still queued or running; wait for them (or scancel "
            "them) before submitting again"
        )


def job_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{job or array task id: (state, reason)}`` from squeue, finished jobs included."""
    if not job_ids:
        return {}
    # Jobs that finished more than MinJobAge ago are unknown: "Invalid job id".
    text = _run(
        ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r"],
        allow="Invalid job id",
    )
    states = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


# ------------------------------------------------------------------ waiting
def wait(
    submission: Submission, poll_seconds: float = 2.0, timeout: float | None = None
) -> WaitResult:
    """Block until the submission's jobs have ended; report the shards that failed.

    Success is the merged output on disk, made by this run. Otherwise the
    failed tasks are the shards whose output is missing (the files are the
    truth: squeue forgets finished jobs after ``MinJobAge``), each with the
    tail of its log; a merge that ran and failed is reported with its log.
    """
    plan = submission.plan
    started = time.monotonic()
    while True:
        states = job_states(submission.job_ids)
        active = {job: state for job, state in states.items() if state[0] in ACTIVE_STATES}
        merge = states.get(submission.merge_job or "")
        blocked = merge is not None and merge[0] == "PENDING" and merge[1] in NEVER_STARTS
        if blocked and all(job == submission.merge_job for job in active):
            _run(["scancel", submission.merge_job])
            break
        if not active:
            break
        if timeout is not None and time.monotonic() - started > timeout:
            raise SlurmError(
                f"{plan.output}: jobs {', '.join(submission.job_ids)} still running after "
                f"{timeout:.0f} s"
            )
        time.sleep(poll_seconds)
    whole = plan_extraction(plan.config, plan.command)
    status = run_status(plan.config, plan.command, whole.manifest, plan.output, plan.shards)
    if status.merged in ("current", "skipped"):
        return WaitResult(True, [])
    failed = [
        FailedTask(shard.index, plan.log(shard.index), _tail(plan.log(shard.index)))
        for shard in status.shards
        if shard.state not in ("current", "skipped")
    ]
    if not failed:  # every shard there: the merge itself failed
        failed = [FailedTask(None, plan.log(None), _tail(plan.log(None)))]
    return WaitResult(False, failed)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"


__all__ = [
    "FailedTask",
    "SlurmError",
    "SlurmOptions",
    "SubmitPlan",
    "Submission",
    "WaitResult",
    "array_range",
    "job_states",
    "plan_submission",
    "slurm_folder",
    "submit",
    "wait",
]
