"""The warm-up workers of ``benchmarks.gpu_quick``: processes that compile, in parallel and before the
timed parts, what the later parts would otherwise compile one after another.

Triton compiles a kernel on its first launch and keeps the binary in its on-disk cache, keyed by the
kernel, its arguments' specialization and its options; inductor keeps compiled graphs in its FX graph
and AOT-autograd caches, and max-autotune's choices with them. Both caches are shared by every process
of the machine and written atomically, so a worker that makes exactly the call a later part makes (the
same function, shapes, dtypes and layouts) leaves that part a cache hit. Triton 3.x compiles a kernel
inside the launching process, one at a time (its ``warmup`` compiles without launching, but still
serially), so parallelism means processes: one per spare CPU core.

Tasks, in priority order (the queue hands them out in this order):
  c  the training step's compiled variant (the longest single task: every graph of G, the Ds and the
     image encoder, one after another), first so it has the most time;
  a  every default launch part a checks (the same calls as its checks);
  b  every compiled reference row of part b (default, TF32, max-autotune);
  d  every autotuning candidate of every kernel at part d's sizes (``benchmarks.launches.forcing_candidate``:
     the autotuner then finds them compiled and only times them);
  e  the GPU tests not run by part a, one pytest process per test function; their results are real
     results (correctness does not mind a busy machine) and part e runs only what is left.

Timings are never taken while these run: the orchestrator kills the workers (each leads its own
process group, so their compiler subprocesses go too) before part b starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from benchmarks.quick_rows import RowLog

ROOT = Path(__file__).resolve().parents[1]


def warm_tasks(sizes: str, candidates: int, tiny: bool) -> list[dict]:
    """The tasks for parts a-d in priority order (part e's pytest tasks come from a collection:
    ``pytest_tasks``). ``candidates``: the longest candidate list of any kernel. ``tiny`` keeps one task
    of each kind (the CPU self-check exercises the path, not the speed)."""
    from benchmarks.cases import applies
    from benchmarks.quick_checks import Check
    from benchmarks.quick_parts import SIZES, TABLE_DTYPES, TABLE_PROVIDERS, _dtype, check_precisions, correctness_checks

    s = SIZES[sizes]
    train = [dict(id="warm|c|train|ours-bf16-compile-fused", tag="c", kind="train", variant="ours-bf16-compile-fused")]
    fused = [dict(id=f"warm|a|{check.label()}|{label}", tag="a", kind="fused", check=check, precision=precision)
             for check in correctness_checks(sizes) for precision, label in check_precisions(check)]
    compiled = [dict(id=f"warm|b|{op}|{case.label}|{dtype}|{provider}", tag="b", kind="row", op=op, case=case,
                     dtype=dtype, provider=provider)
                for op, case in s["tables"] for dtype in TABLE_DTYPES for provider in TABLE_PROVIDERS
                if provider.startswith("reference-compiled") and applies(provider, _dtype(dtype))]
    tuned_cases = []
    for op, tune_case, timed_case in s["tuned"]:
        for case in (tune_case, timed_case):
            if (op, case) not in tuned_cases:
                tuned_cases.append((op, case))
    candidate = [dict(id=f"warm|d|{op}|{case.label}|{dtype}|candidate {index}", tag="d", kind="candidate",
                      check=Check(op, case, dtype), index=index)
                 for index in range(candidates) for op, case in tuned_cases for dtype in TABLE_DTYPES]
    if tiny:
        return fused[:1] + compiled[:1] + candidate[:1]
    return train + fused + compiled + candidate


def pytest_tasks(nodes: list[str], tiny: bool) -> list[dict]:
    """One task per test function (its parametrizations together), in collection order."""
    groups: dict[str, list[str]] = {}
    for node in nodes:
        groups.setdefault(node.split("[")[0], []).append(node)
    tasks = [dict(id=f"warm|e|{name}", tag="e", kind="pytest", nodes=group) for name, group in groups.items()]
    return tasks[:1] if tiny else tasks


def run_task(task: dict, cfg: dict) -> None:
    """Does one task's compiling call (its results are thrown away, except pytest's, which the pytest
    plugin writes to the results file itself)."""
    import torch

    from attngan_fast import kernels
    from benchmarks.cases import compile_backend

    device = torch.device(cfg["device"])
    with compile_backend(cfg["compile_backend"]):
        if task["kind"] == "fused":
            from benchmarks.quick_checks import make_inputs, run

            with kernels.autotuning(False):
                run(task["check"], make_inputs(task["check"], device, 0), 0, reference=False, precision=task["precision"])
        elif task["kind"] == "candidate":
            from benchmarks.launches import forcing_candidate
            from benchmarks.quick_checks import make_inputs, run

            with forcing_candidate(task["index"]):
                run(task["check"], make_inputs(task["check"], device, 0), 0, reference=False)
        elif task["kind"] == "row":
            from benchmarks.gpu import kernel_row

            row = kernel_row(task["op"], task["case"], task["dtype"], "fwd+bwd", task["provider"], device, None)
            if "error" in row:
                raise RuntimeError(row["error"])
        elif task["kind"] == "train":
            from benchmarks.gpu import train_row

            with kernels.autotuning(False):
                row = train_row(task["variant"], device, None)
            if "error" in row:
                raise RuntimeError(row["error"])
        elif task["kind"] == "die":  # the tests' stand-in for a worker that crashes (a native abort)
            os._exit(134)
        elif task["kind"] == "pytest":
            from benchmarks.quick_parts import pytest_command

            env = {**os.environ, "ATTNGAN_QUICK_ROWS": cfg["rows"], "ATTNGAN_QUICK_WHERE": "background, part a's box"}
            subprocess.run(pytest_command(task["nodes"]), cwd=ROOT, env=env, check=False)
        else:
            raise ValueError(f"unknown warm task kind {task['kind']!r}")


def _worker(queue, cfg: dict, output: str) -> None:
    """A worker: its own process group (so that killing it kills its compilers too), its output in the
    warm-up log, then tasks until it is killed."""
    os.setsid()
    fd = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    log = RowLog(cfg["rows"])
    while True:
        task = queue.get()
        if task is None:
            return
        started = time.time()
        fields = {}
        # Said before the task runs, so that the pool can name the task of a worker that dies in it.
        log.write("task", part="warm", id=task["id"], pid=os.getpid())
        try:
            run_task(task, cfg)
            status = "ok"
        except BaseException as err:  # one broken task must not stop the others
            status, fields = "error", {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        log.write("row", part="warm", id=task["id"], tag=task["tag"], status=status,
                  seconds=round(time.time() - started, 1), pid=os.getpid(), **fields)
        print(f"[warm {os.getpid()}] {task['id']}: {status} in {time.time() - started:.1f} s {fields}", flush=True)


@contextlib.contextmanager
def _environ(env: dict):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class WarmPool:
    """``workers`` spawned processes taking tasks from one queue; ``kill`` ends them and everything they
    started."""

    def __init__(self, cfg: dict, workers: int, output: Path):
        import multiprocessing

        self.cfg, self.output = cfg, str(output)
        self._context = multiprocessing.get_context("spawn")  # no CUDA state is ever forked
        self._queue = self._context.Queue()
        self._procs: list = []
        self._env: dict = {}
        self._log = RowLog(cfg["rows"])
        self.workers = workers
        self.submitted: dict[str, str] = {}  # task id -> tag

    def start(self, env: dict) -> None:
        # The parallelism is mostly the workers; a few compile threads each still let max-autotune
        # precompile its choices side by side (16 each would be ~240 compiler processes).
        self._env = {**env, "TORCHINDUCTOR_COMPILE_THREADS": "4"}
        for _ in range(self.workers):
            self._spawn()

    def _spawn(self) -> None:
        with _environ(self._env):
            proc = self._context.Process(target=_worker, args=(self._queue, self.cfg, self.output), daemon=True)
            proc.start()
        self._procs.append(proc)

    def _reap(self, records: list[dict]) -> bool:
        """A worker that died (a native crash: the task's row never comes) is replaced, and the task it
        was running gets an error row, so that nobody waits for it until the box ends. True when a
        row was written."""
        wrote = False
        finished = {r["id"] for r in records if r["kind"] == "row" and r.get("part") == "warm"}
        for proc in [p for p in self._procs if not p.is_alive()]:
            self._procs.remove(proc)
            for record in records:
                if record["kind"] == "task" and record.get("pid") == proc.pid and record["id"] not in finished:
                    self._log.write("row", part="warm", id=record["id"], tag=self.submitted.get(record["id"]),
                                    status="error", pid=proc.pid,
                                    error=f"the warm-up worker died during this task (exit code {proc.exitcode})")
                    print(f"[warm] worker {proc.pid} died (exit code {proc.exitcode}) in {record['id']}", flush=True)
                    wrote = True
            self._spawn()
        return wrote

    def submit(self, tasks: list[dict]) -> None:
        for task in tasks:
            self.submitted[task["id"]] = task["tag"]
            self._queue.put(task)

    def pending(self, records: list[dict], tags: str | None = None) -> list[str]:
        """Submitted task ids (of ``tags`` only, if given) without a result row yet (a dead worker's
        task gets its error row here)."""
        if self._procs and self._reap(records):
            records = RowLog(self.cfg["rows"]).read()
        finished = {r["id"] for r in records if r["kind"] == "row" and r.get("part") == "warm"}
        return [i for i, tag in self.submitted.items() if i not in finished and (tags is None or tag in tags)]

    def alive(self) -> bool:
        return any(p.is_alive() for p in self._procs)

    def kill(self) -> None:
        for proc in self._procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                proc.kill()
        for proc in self._procs:
            proc.join(timeout=5)
        self._procs = []
        self._queue.close()  # tasks never handed out are dropped, not waited for
        self._queue.cancel_join_thread()


def python_env(device: str) -> dict:
    """The environment of every child process: this repository first on the path, unbuffered output,
    the Triton interpreter on CPU only (it must be chosen before ``attngan_fast.kernels`` is imported)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    return env

