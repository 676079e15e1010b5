"""Train a pipeline's members side by side, one ``bloodcell train`` process with one thread each.

Each member is a child process (``python -m bloodcell train ... --threads 1``) writing its
output to ``<run>/<member>.log``. A finished member (see
:func:`bloodcell.core.model_folder.is_trained`) is skipped; a member whose folder exists but
did not finish continues with ``--resume``; the others start fresh. Waiting is bounded: a
member past its time limit is stopped, and an interrupted pipeline stops its children before
it returns.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from bloodcell.core.errors import BloodcellError
from bloodcell.core.model_folder import is_model_folder, is_trained
from bloodcell.core.settings import usable_cpus
from bloodcell.pipelines.spec import Member, Spec

POLL_SECONDS = 0.5
STOP_SECONDS = 30.0  # how long a stopped member may take to save its epoch before it is killed
TAIL_LINES = 20


class MemberFailed(BloodcellError):
    """A member's training process failed; its log names the cause."""


@dataclass
class Job:
    member: Member
    command: list[str]
    log: Path
    process: subprocess.Popen | None = None
    started: float = 0.0


def is_finished(spec: Spec, member: Member) -> bool:
    """Whether a member's training finished (every part of an ensemble recipe, and its ensemble)."""
    folder = spec.folder(member)
    if not member.parts:
        return is_trained(folder)
    return all(is_trained(folder / p) for p in member.parts) and is_model_folder(folder / "ensemble")


def train_command(spec: Spec, member: Member) -> list[str]:
    """The ``bloodcell train`` command of a member: ``--resume`` when its folder exists, else a fresh run;
    on the member's threads, without progress bars (its log is a file)."""
    folder = spec.folder(member)
    command = [sys.executable, "-m", "bloodcell", "train"]
    quiet = ("--threads", str(member.threads), "--no-progress")
    if folder.exists():
        return [*command, "--resume", str(folder), *quiet]
    return [*command, "--recipe", member.recipe, "--data", str(spec.data), "--out", str(folder), *member.args,
            *spec.train_args, *quiet]


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError:
        return ""


def _start(job: Job, env: dict) -> None:
    job.log.parent.mkdir(parents=True, exist_ok=True)
    env = {**env, "OMP_NUM_THREADS": str(job.member.threads)}
    with open(job.log, "ab") as log:
        job.process = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env)
    job.started = time.monotonic()


def _stop(jobs: list[Job]) -> None:
    """Ask running members to stop (they keep their last complete epoch), then kill the ones that hang."""
    running = [j.process for j in jobs if j.process is not None and j.process.poll() is None]
    for p in running:
        p.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for p in running:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=STOP_SECONDS)


def _child_env() -> dict:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _run_jobs(pending: list[Job], jobs: int, timeout: float | None, say) -> list[tuple[Job, str]]:
    """Run the jobs, at most ``jobs`` at once; returns the failed ones with the reason."""
    env, running, failed = _child_env(), [], []
    queue = list(pending)
    try:
        while queue or running:
            while queue and len(running) < jobs:
                job = queue.pop(0)
                say(f"training {job.member.name} (log: {job.log})")
                _start(job, env)
                running.append(job)
            time.sleep(POLL_SECONDS)
            for job in list(running):
                code = job.process.poll()
                if code is None and timeout is not None and time.monotonic() - job.started > timeout:
                    _stop([job])
                    failed.append((job, f"stopped after {timeout:g} s (its last complete epoch is kept)"))
                    running.remove(job)
                elif code is not None:
                    running.remove(job)
                    if code != 0:
                        failed.append((job, f"exit status {code}"))
                    else:
                        say(f"{job.member.name}: trained")
    except BaseException:
        _stop(running)
        raise
    return failed


def train_members(spec: Spec, *, jobs: int | None = None, timeout: float | None = None, say=print) -> list[str]:
    """Train every member of ``spec`` that is not finished, ``jobs`` at a time, one thread each.

    Parameters
    ----------
    spec : Spec
        The pipeline's members.
    jobs : int, optional
        Members trained at once (default: one per member, at most the number of CPU cores).
    timeout : float, optional
        Seconds a member may train before it is stopped (default: no limit).
    say : callable
        Receives one progress line at a time.

    Returns
    -------
    list of str
        The names of the members trained by this call (finished ones are skipped).

    Raises
    ------
    MemberFailed
        When a member's process fails; the last lines of its log are printed first.
    """
    pending = []
    for member in spec.members:
        if is_finished(spec, member):
            say(f"{member.name}: trained")
            continue
        pending.append(Job(member, train_command(spec, member), spec.run / f"{member.name}.log"))
    if jobs is None:
        jobs = max(1, min(len(pending), usable_cpus()))
    failed = _run_jobs(pending, max(1, int(jobs)), timeout, say) if pending else []
    for job, reason in failed:
        say(f"{job.member.name} failed ({reason}); the end of its log {job.log}:\n{log_tail(job.log)}")
    if failed:
        names = ", ".join(job.member.name for job, _ in failed)
        raise MemberFailed(f"Training failed for {names} (logs in {spec.run}). Fix the cause and run the pipeline "
                           "again: finished members are kept and interrupted ones resume.")
    return [job.member.name for job in pending]
