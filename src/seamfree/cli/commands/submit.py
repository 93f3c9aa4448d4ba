"""``seamfree submit predict|segment ARGS --tasks N``: a SLURM job array that runs the command in N shares.

The sbatch script runs ``seamfree predict ARGS --shard $SLURM_ARRAY_TASK_ID/N`` in each task. It asks SLURM for
a signal (USR1) two minutes before the walltime: the task writes its batch in flight, records its progress,
exits with status 75 and the script requeues it (``--requeue``), so a prediction longer than the walltime goes
on in the next run of the same task. A preemption (SIGTERM from SLURM) pauses the task the same way and SLURM
requeues it. The script and the tasks' logs go to ``OUT.seamfree-jobs/``. ``segment`` runs as an array the same
way (each task labels its share of the blocks; the last joins the objects). ``predict --segment METHOD`` chains a
segment array after the prediction's (``--dependency=afterok``).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from seamfree.errors import SeamfreeError

__all__ = ["add_parser", "run", "sbatch_script"]

EXIT_PAUSED = 75  # cli.main's: a task stopped by a signal after writing its work (the script requeues it)
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


def _submit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", type=int, help="number of array tasks (shares of the prediction)")
    p.add_argument("--time", help="walltime per task, e.g. 04:00:00 or 1-00:00:00 (default: the partition's)")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per task (default 1; torch uses them all)")
    p.add_argument("--mem", help="memory per task, e.g. 16G")
    p.add_argument("--gpus-per-task", type=int, help="GPUs per task (add --device cuda to the command)")
    p.add_argument("--account", help="SLURM account to charge")
    p.add_argument("--extra", action="append", default=[], metavar="OPTION",
                   help="another sbatch option, e.g. --extra=--qos=long (repeatable)")
    p.add_argument("--warn-seconds", type=int, default=120,
                   help="seconds before the walltime at which a task pauses and is requeued (default 120)")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script(s), submit nothing")
    p.add_argument("--wait", action="store_true", help="wait until the job ends, then print seamfree status")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``submit`` to the command's subparsers."""
    p = subparsers.add_parser("submit", help="run predict (or segment) as a SLURM job array of --tasks shares "
                                             "that survives walltime and preemption")
    p.add_argument("what", choices=["predict", "segment"], help="the command to run in the job")
    p.add_argument("arguments", nargs=argparse.REMAINDER,
                   help="its arguments, as for seamfree predict/segment (model, image, output, options)")
    _submit_options(p)
    p.set_defaults(handler=run)


def _split(arguments: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Submit's own options (anywhere after the command) and the command's arguments."""
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _submit_options(own)
    return own.parse_known_args(arguments)


def _seamfree() -> list[str]:
    """How the job runs this same seamfree (the executable of this process, else this Python)."""
    launched = Path(sys.argv[0])
    if launched.name == "seamfree" and launched.exists():
        return [str(launched.resolve())]
    found = shutil.which("seamfree")
    return [found] if found else [sys.executable, "-m", "seamfree.cli.main"]


def sbatch_script(command: list[str], *, name: str, tasks: int | None, logs: Path, options: argparse.Namespace,
                  workdir: Path, dependency: str | None = None) -> str:
    """The sbatch script that runs ``command`` (for an array: ``--shard TASK/N`` appended) with requeue on the
    walltime's warning."""
    lines = ["#!/bin/bash", f"# written by seamfree submit on {time.strftime('%Y-%m-%d %H:%M:%S')}",
             f"#SBATCH --job-name={name}", f"#SBATCH --chdir={workdir}",
             f"#SBATCH --output={logs}/%A_%a.log" if tasks else f"#SBATCH --output={logs}/%j.log",
             "#SBATCH --open-mode=append", "#SBATCH --requeue",
             f"#SBATCH --signal=B:USR1@{options.warn_seconds}",
             f"#SBATCH --cpus-per-task={options.cpus_per_task or 1}"]
    if tasks:
        lines.append(f"#SBATCH --array=0-{tasks - 1}")
    for flag, value in (("time", options.time), ("partition", options.partition), ("mem", options.mem),
                        ("gpus-per-task", options.gpus_per_task), ("account", options.account),
                        ("dependency", dependency)):
        if value is not None:
            lines.append(f"#SBATCH --{flag}={value}")
    lines += [f"#SBATCH {extra}" for extra in options.extra]
    run = shlex.join(command)
    if tasks:
        run += f' --shard "${{SLURM_ARRAY_TASK_ID}}/{tasks}"'
    requeue = ('scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' if tasks
               else 'scontrol requeue "$SLURM_JOB_ID"')
    lines += [
        "",
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
        "# the task runs in the background so that this shell can pass on the walltime's warning (USR1): the task",
        f"# then writes its batch in flight, records its progress and exits with {EXIT_PAUSED}; it is requeued",
        f"{run} &",
        "task=$!",
        "warned=0",
        "trap 'warned=1; kill -USR1 $task 2>/dev/null' USR1",
        "trap 'kill -TERM $task 2>/dev/null' TERM",
        "while true; do wait $task; rc=$?; kill -0 $task 2>/dev/null || break; done",
        f'if [ "$rc" = {EXIT_PAUSED} ] && [ "$warned" = 1 ]; then',
        f"    {requeue}",
        "fi",
        "exit $rc",
    ]
    return "\n".join(lines) + "\n"


def _output_of(what: str, parsed: argparse.Namespace) -> Path:
    return Path(parsed.out if what == "predict" else (parsed.out or parsed.prediction))


def run(args: argparse.Namespace) -> int:
    from seamfree.cli.parser import build_parser

    options, command_args = _split(args.arguments)
    for name in ("tasks", "time", "partition", "cpus_per_task", "mem", "gpus_per_task", "account"):
        if getattr(options, name) is None:
            setattr(options, name, getattr(args, name))
    options.extra = list(args.extra) + list(options.extra)
    options.dry_run = options.dry_run or args.dry_run
    options.wait = options.wait or args.wait
    tasks = options.tasks
    if tasks is None or tasks < 1:
        raise SeamfreeError(f"seamfree submit needs --tasks N (N >= 1, the number of array tasks), got {tasks}")
    if options.time is not None and not _TIME.match(options.time):
        raise SeamfreeError(f"--time takes SLURM's walltime format (MM, HH:MM:SS, D-HH:MM:SS), got {options.time!r}")
    if "--shard" in command_args:
        raise SeamfreeError("seamfree submit adds --shard to each task itself; remove --shard from the arguments")
    parsed = build_parser().parse_args([args.what, *command_args])  # a typo fails here, not in every task
    if args.what == "predict" and (parsed.workers or parsed.scheduler):
        raise SeamfreeError("seamfree submit runs each share in its own task; remove --workers/--scheduler")
    output = _output_of(args.what, parsed).resolve()
    folder = output.with_name(output.name + ".seamfree-jobs")
    workdir = Path.cwd()
    segment_method = getattr(parsed, "segment", None) if args.what == "predict" else None
    main_args = list(command_args)
    if segment_method is not None:
        position = main_args.index("--segment")
        del main_args[position:position + 2]
    scripts = [(f"seamfree-{args.what}", sbatch_script([*_seamfree(), args.what, *main_args],
                                                       name=f"seamfree-{args.what}", tasks=tasks, logs=folder,
                                                       options=options, workdir=workdir))]
    if segment_method is not None:
        segment = [*_seamfree(), "segment", str(parsed.out), "--method", segment_method]
        scripts.append(("seamfree-segment", sbatch_script(segment, name="seamfree-segment", tasks=tasks, logs=folder,
                                                          options=options, workdir=workdir,
                                                          dependency="afterok:{previous}")))
    if options.dry_run:
        for name, script in scripts:
            print(f"# ---- {name}.sbatch ----\n{script.replace('{previous}', 'JOBID')}")
        return 0
    if shutil.which("sbatch") is None:
        raise SeamfreeError("sbatch is not on PATH: run seamfree submit on a SLURM login node, or pass --dry-run to "
                            "see the script and submit it yourself")
    folder.mkdir(exist_ok=True)
    previous = None
    for name, script in scripts:
        path = folder / f"{name}.sbatch"
        path.write_text(script.replace("{previous}", previous or ""))
        previous = _sbatch(path, options.wait and name == scripts[-1][0])
        print(f"submitted {name}: job {previous} ({path})")
    print(f"follow it with: seamfree status {shlex.quote(str(output))}")
    if options.wait and args.what == "predict" and segment_method is None:
        from seamfree.cli.commands.status import _text
        from seamfree.io.progress import output_status

        print(_text(output_status(output)))
    elif options.wait:
        print(f"the job ended; its tasks' logs are in {folder}")
    return 0


def _sbatch(path: Path, wait: bool) -> str:
    command = ["sbatch", "--parsable", *(["--wait"] if wait else []), str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ.copy())
    if result.returncode != 0 and not (wait and result.stdout.strip()):
        raise SeamfreeError(f"sbatch refused {path}: {(result.stderr or result.stdout).strip()}; fix the option it "
                            "names (seamfree submit --dry-run shows the script)")
    return result.stdout.strip().splitlines()[0].split(";")[0]
