"""``patchcli submit``: run an extraction as a SLURM array job plus a merge job."""

from __future__ import annotations

import sys

import click

from .common import run_command


@click.command()
@click.argument("command", type=click.Choice(["uniform", "weighted", "label", "grid", "volumes"]))
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--shards", type=click.IntRange(min=1), required=True, help="Array tasks.")
@click.option("--partition", help="sbatch --partition.")
@click.option("--time", help="Time limit of each task, e.g. 02:00:00.")
@click.option(
    "--cpus-per-task",
    type=click.IntRange(min=1),
    help="Cores per task; the tasks' workers follow it.",
)
@click.option("--mem", help="Memory per task, e.g. 16G.")
@click.option("--account", help="sbatch --account.")
@click.option(
    "--max-parallel", type=click.IntRange(min=1), help="Tasks running at once (--array=...%N)."
)
@click.option(
    "--sbatch-option",
    "sbatch_options",
    multiple=True,
    metavar="OPTION",
    help="Any other #SBATCH option, verbatim (repeatable), e.g. --sbatch-option=--qos=long.",
)
@click.option(
    "--retry-skipped",
    is_flag=True,
    help="Also run again the shards that skipped subjects (on_error: skip), so that "
    "repaired files come in.",
)
@click.option("--dry-run", is_flag=True, help="Print the scripts; write and submit nothing.")
@click.option("--wait", is_flag=True, help="Block until the merge; exit 1 if a task failed.")
@run_command
def submit(
    command,
    config,
    shards,
    partition,
    time,
    cpus_per_task,
    mem,
    account,
    max_parallel,
    sbatch_options,
    retry_skipped,
    dry_run,
    wait,
):
    """Run COMMAND (uniform, weighted, label, grid) on CONFIG as SLURM jobs.

    Checks the config and every input's header first, writes the sbatch
    scripts into <output>.slurm/ (their logs go there too), submits an array
    of --shards tasks, each running one shard with --resume, and a merge job
    that runs once they all succeeded. Submitting again runs only the shards
    missing, failed, or stale (their own manifest rows changed: fix a subject's row,
    submit again, and only its shard runs), plus the merge.

    \b
    Example:
      patchcli submit uniform configs/cluster.yaml --shards 16 --time 01:00:00 \\
          --cpus-per-task 4 --mem 8G --wait
    """
    from .. import cluster

    options = cluster.SlurmOptions(
        partition=partition,
        time=time,
        cpus_per_task=cpus_per_task,
        mem=mem,
        account=account,
        max_parallel=max_parallel,
        sbatch_options=tuple(sbatch_options),
    )
    plan = cluster.plan_submission(command, config, shards, options, retry_skipped=retry_skipped)
    if not plan.todo and not plan.merge:
        click.echo(f"submit: {plan.output} is already complete; nothing to submit")
        return
    done = plan.shards - len(plan.todo)
    for shard in plan.status.shards if plan.status else ():
        if shard.index in plan.todo and shard.state in ("stale", "skipped"):
            click.echo(f"  shard {shard.index} runs again: {shard.state}, {shard.detail}")
    if dry_run:
        for name, text in plan.scripts.items():
            if text:
                click.echo(f"# ---- {plan.folder / name} ----\n{text}")
        click.echo(
            f"dry run: would submit shards {cluster.array_range(plan.todo) or 'none'} of "
            f"{plan.shards} ({done} complete) and the merge; nothing written or submitted"
        )
        return
    submission = cluster.submit(plan)
    click.echo(f"submit: {command}, {plan.shards} shards -> {plan.output}")
    if submission.array_job:
        already = f" ({done} of {plan.shards} already complete)" if done else ""
        click.echo(
            f"  array job {submission.array_job}: shards {cluster.array_range(plan.todo)}"
            f"{already}; logs {plan.folder}/shard-<i>.log"
        )
    click.echo(
        f"  merge job {submission.merge_job}: "
        f"{'after the array' if submission.array_job else 'now'}; log {plan.log(None)}"
    )
    click.echo(f"  follow: squeue -j {','.join(submission.job_ids)}")
    if not wait:
        return
    result = cluster.wait(submission)
    if result.ok:
        click.echo(f"submit: done, {plan.output}")
        return
    shards_failed = [task for task in result.failed if task.shard is not None]
    what = (
        f"{len(shards_failed)} of {plan.shards} shards failed: "
        + ", ".join(f"shard {task.shard} (log {task.log})" for task in shards_failed)
        if shards_failed
        else f"the merge failed (log {result.failed[0].log})"
    )
    click.echo(f"Error: {what}", err=True)
    for task in result.failed:
        label = "merge" if task.shard is None else f"shard {task.shard}"
        click.echo(f"  {label}, end of {task.log.name}:", err=True)
        for line in task.tail.splitlines():
            click.echo(f"    {line}", err=True)
    click.echo(
        "Fix the cause, then run the same submit again: it runs only the failed shards.",
        err=True,
    )
    sys.exit(1)
