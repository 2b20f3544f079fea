"""``make gpu-check``: the whole GPU acceptance in one invocation, in minutes.

Stages (each in its own process, with its own time budget; a failure or a
timeout is recorded and the run goes on):

1. ``env``         device, versions, tools.
2. ``matrix``      verify's check matrix on CUDA (Triton backend; forward and
                   every gradient against the float64 reference, 3 dtypes ×
                   3 layouts) plus the training-shape ``contourlet_energy``
                   ``nlevs=[3, 3]`` case at (8, 256, 128, 128), sharded over
                   parallel processes: this also fills the Triton cache for
                   every later stage (the timing shapes and the sanitizer's
                   are warmed alongside). The CUDA extension is JIT-built
                   meanwhile, in the background.
3. in parallel:    ``ext``: the extension's matrix rows and
                   ``tests/test_cuda_gpu.py``; ``determinism``: bitwise
                   run-to-run equality in deterministic mode;
                   ``sanitizer``: ``compute-sanitizer`` memcheck and
                   racecheck on small shapes.
4. ``timing``      copy bandwidth, then every op × backend (fwd, fwd+bwd,
                   fp32) at a training shape with CUDA events, next to the
                   static prediction of ``bench/results/static-*.json``.
5. ``train_step``  one SSTKDLoss step's share of a PSPNet-R18 student step.

Results: one folder of at most 8 files (``summary.md`` fits one screen,
``results.json`` holds everything). ``--dry-run`` runs on the CPU in the
Triton interpreter at tiny shapes and skips the GPU-only stages, saying why;
its workers are forked from one process that imported torch once (a
:class:`ForkServer`), since at tiny shapes importing torch is most of a stage.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import glob
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_FILES = 8

# Seconds per stage on the GPU (a fresh H200, cold caches): 7 minutes in all.
GPU_BUDGETS = {"env": 30, "matrix": 180, "ext_build": 240, "parallel": 90, "timing": 50, "train_step": 55}
DRY_BUDGETS = {"env": 30, "matrix": 60, "ext_build": 30, "parallel": 60, "timing": 40, "train_step": 40}
TOTAL_BUDGET = {"gpu": 420, "dry": 120}


# ----------------------------------------------------------------------------- processes


class ForkServer:
    """Starts the dry run's workers by forking them from one process that has imported torch
    (``python -m sstkd.gpucheck.workers --serve``): an interpreter-sized stage then takes about
    its own work, not the seconds of importing torch and Dynamo again. Each worker runs in its
    own process group, as a spawned one does, so a timeout kills it the same way."""

    def __init__(self, env: dict, log_path: str):
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "sstkd.gpucheck.workers", "--serve"], cwd=REPO,
                                         env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         text=True, start_new_session=True)
        self._cond = threading.Condition()
        self._pids: dict[int, int] = {}
        self._exits: dict[int, int] = {}
        self._n = 0
        self.gone = False  # its output ended: it exited (a dead server's workers' exits are unknown)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            word, *nums = line.split() or [""]
            with self._cond:
                if word == "started":
                    self._pids[int(nums[0])] = int(nums[1])
                elif word == "exited":
                    self._exits[int(nums[0])] = int(nums[1])
                self._cond.notify_all()
        with self._cond:
            self.gone = True
            self._cond.notify_all()

    def start(self, argv: list[str], log_path: str, timeout: float) -> int | None:
        """Fork a worker on ``argv`` (its output to ``log_path``); its pid, or None when the server
        is gone or did not answer within ``timeout`` (it imports torch first)."""
        with self._cond:
            if self.gone:
                return None
            self._n += 1
            rid = self._n
            try:
                self.proc.stdin.write(json.dumps({"id": rid, "argv": argv, "log": log_path}) + "\n")
                self.proc.stdin.flush()
            except OSError:
                return None
            self._cond.wait_for(lambda: rid in self._pids or self.gone, timeout)
            return self._pids.get(rid)

    def wait(self, pid: int, timeout: float | None) -> int | None:
        """The exit status of worker ``pid`` (negative: killed by that signal); None if it has not
        exited within ``timeout`` or the server is gone."""
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exits or self.gone, timeout)
            return self._exits.get(pid)

    def output(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # the server exits at the end of its input
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc.pid)
            self.proc.wait()


def _kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (a worker and what it started); the process alone
    if it has no group yet."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
            return
        except ProcessLookupError:
            continue


class Runner:
    """Runs workers / commands as child processes with time limits; keeps their logs.

    ``fork`` (default: in the dry run) starts workers through a :class:`ForkServer`; otherwise,
    and always on the GPU, each worker is a fresh ``python -m sstkd.gpucheck.workers``."""

    def __init__(self, work: str, dry_run: bool, deadline: float, fork: bool | None = None):
        self.work, self.dry_run, self.deadline = work, dry_run, deadline
        self.fork = dry_run if fork is None else fork
        self.logs: dict[str, str] = {}
        self._n = 0
        self._lock = threading.Lock()
        self.server: ForkServer | None = None  # started by the first forked worker

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        if self.dry_run:
            env["SSTKD_GPUCHECK_DRY_RUN"] = "1"
            env["TRITON_INTERPRET"] = "1"
            env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def _log_path(self, name: str) -> str:
        with self._lock:
            self._n += 1
            return os.path.join(self.work, f"{self._n:02d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.log")

    def _finish(self, name: str, log_path: str, t0: float, rc, timed_out: bool) -> dict:
        try:
            with open(log_path, errors="replace") as f:
                out = f.read()
        except OSError:
            out = ""
        with self._lock:
            self.logs[name] = out
        return {"rc": rc, "seconds": round(time.monotonic() - t0, 1), "timed_out": timed_out, "output": out}

    def command(self, name: str, argv: list[str], budget: float, env: dict | None = None) -> dict:
        """Run ``argv``; returns ``{"rc", "seconds", "timed_out", "output"}`` (never raises)."""
        budget = max(1.0, min(budget, self.left()))
        log_path = self._log_path(name)
        t0 = time.monotonic()
        with open(log_path, "w") as log:
            try:
                p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env or self.env(),
                                     start_new_session=True)
            except OSError as e:
                return {"rc": None, "seconds": 0.0, "timed_out": False, "output": f"could not start: {e}"}
            try:
                rc = p.wait(timeout=budget)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(p.pid)  # the child's own process group
                rc = p.wait()
        return self._finish(name, log_path, t0, rc, timed_out)

    def forked(self, name: str, argv: list[str], budget: float) -> dict:
        """:meth:`command` for a worker's ``argv`` (``KIND SPEC RESULT``), forked by the fork server."""
        with self._lock:
            if self.server is None:
                self.server = ForkServer(self.env(), os.path.join(self.work, "fork-server.log"))
            server = self.server
        log_path = self._log_path(name)
        pid = server.start(argv, log_path, max(1.0, self.left()))
        if pid is None:
            return {"rc": None, "seconds": 0.0, "timed_out": False,
                    "output": f"the fork server started no worker: {_last_line(server.output())}"}
        budget = max(1.0, min(budget, self.left()))
        t0 = time.monotonic()
        rc = server.wait(pid, budget)
        timed_out = rc is None and not server.gone
        if rc is None:  # over its budget, or orphaned by a dead server: it goes either way
            _kill_group(pid)
            rc = server.wait(pid, 30)
        run = self._finish(name, log_path, t0, rc, timed_out)
        if rc is None and not timed_out:
            run["output"] += f"\nthe fork server exited: {_last_line(server.output())}"
        return run

    def close(self) -> None:
        """Stop the fork server, if one was started (its output joins the logs when it said anything)."""
        if self.server is not None:
            self.server.close()
            out = self.server.output()
            if out.strip():
                self.logs["fork-server"] = out
            self.server = None

    def worker(self, name: str, kind: str, spec: dict, budget: float, env: dict | None = None) -> dict:
        """Run one worker of :mod:`sstkd.gpucheck.workers`; its result dict plus ``rows`` and ``run``.
        A worker with its own ``env`` is always a fresh process."""
        spec = {**spec, "dry_run": self.dry_run}
        base = os.path.join(self.work, re.sub(r"[^A-Za-z0-9_.-]", "_", name))
        with open(base + ".spec.json", "w") as f:
            json.dump(spec, f)
        argv = [kind, base + ".spec.json", base + ".json"]
        if self.fork and env is None:
            run = self.forked(name, argv, budget)
        else:
            run = self.command(name, [sys.executable, "-m", "sstkd.gpucheck.workers", *argv], budget, env=env)
        result: dict = {}
        if os.path.exists(base + ".json"):
            with open(base + ".json") as f:
                result = json.load(f)
        if not result:
            why = (f"timed out after {run['seconds']:.0f} s (budget)" if run["timed_out"]
                   else f"exited with {run['rc']}: {_last_line(run['output'])}")
            result = {"status": "timeout" if run["timed_out"] else "error", "reason": why}
        rows = []
        if os.path.exists(base + ".json.rows"):
            with open(base + ".json.rows") as f:
                rows = [json.loads(line) for line in f if line.strip()]
        result["rows"] = rows
        result["wall_seconds"] = run["seconds"]
        return result


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


# ----------------------------------------------------------------------------- stages


def _shape_cost(shape: str) -> int:
    n = 1
    for part in re.findall(r"\d+", shape):
        n *= int(part)
    return n


def plan_matrix(dry_run: bool, jobs: int) -> tuple[list[list[dict]], int]:
    """Units of the check matrix (one case × one dtype), dealt to ``jobs`` shards.

    Units of one op and dtype stay in one shard, heaviest groups first onto the
    least loaded shard: the same Triton kernel variants are then compiled by
    one process, not by several at once (the cache has no cross-process lock).
    """
    from sstkd.gpucheck.workers import is_training, matrix_cases

    cases = matrix_cases(dry_run)
    dtypes = ["fp32"] if dry_run else ["fp32", "fp16", "bf16"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for i, case in enumerate(cases):
        training = is_training(case.name, case.label)
        layouts = ["contiguous"] if dry_run or training else ["contiguous", "channels_last", "noncontig"]
        for d in (["fp32", "bf16"] if training and not dry_run else dtypes):
            unit = {"cases": [i], "dtypes": [d], "layouts": layouts,
                    "cost": _shape_cost(case.label) * len(layouts) * (4 if training else 1)}
            groups.setdefault((case.name, d), []).append(unit)
    shards: list[list[dict]] = [[] for _ in range(max(1, jobs))]
    load = [0] * len(shards)
    for units in sorted(groups.values(), key=lambda us: -sum(u["cost"] for u in us)):
        k = load.index(min(load))
        shards[k].extend(units)
        load[k] += sum(u["cost"] for u in units)
    return [sh for sh in shards if sh], sum(len(us) for us in groups.values())


def stage_matrix(r: Runner, jobs: int, budget: float, ext_thread_start) -> dict:
    """Parallel shards of the Triton check matrix, plus the warm-up of the timing and sanitizer shapes."""
    from sstkd.gpucheck.workers import timing_cases

    t0 = time.monotonic()
    shards, n_units = plan_matrix(r.dry_run, jobs)
    results: list[dict] = [{} for _ in shards]
    extra: dict[str, dict] = {}

    def run_shard(k: int, units: list[dict]):
        spec_units = [{"cases": u["cases"], "dtypes": u["dtypes"], "layouts": u["layouts"]} for u in units]
        results[k] = r.worker(f"matrix-{k}", "matrix", {"units": spec_units, "backends": ["triton"]}, budget)

    threads = [threading.Thread(target=run_shard, args=(k, u)) for k, u in enumerate(shards)]
    if not r.dry_run:
        n_t = len(timing_cases(False))
        warm_specs = {"warm-timing": ("warm_timing", {"cases": list(range(n_t)), "backends": ["triton"]}),
                      "warm-sanitizer": ("sanitize_target", {})}

        def run_extra(name, kind, spec):
            extra[name] = r.worker(name, kind, spec, budget)

        threads += [threading.Thread(target=run_extra, args=(n, k, s)) for n, (k, s) in warm_specs.items()]
    ext_thread_start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = [row for res in results for row in res.get("rows", []) if row.get("kind") != "unit_done"]
    expected = n_units
    done_units = sum(row.get("kind") == "unit_done" for res in results for row in res.get("rows", []))
    failed_shards = [f"shard {k}: {res.get('status')}: {res.get('reason', '')}" for k, res in enumerate(results)
                     if res.get("status") != "ok"]
    n_fail = sum(not row.get("ok") for row in rows)
    status = "ok" if not failed_shards and n_fail == 0 and done_units == expected and rows else "fail"
    return {"status": status, "wall_seconds": round(time.monotonic() - t0, 1), "rows": rows, "units": expected, "units_done": done_units, "shards": len(shards),
            "shard_problems": failed_shards, "warm": {k: _brief(v) for k, v in extra.items()}}


def _brief(res: dict) -> dict:
    rows = res.get("rows", [])
    return {"status": res.get("status"), "reason": res.get("reason", ""), "ok_rows": sum(bool(x.get("ok")) for x in rows),
            "rows": len(rows), "errors": [x.get("error") for x in rows if not x.get("ok")][:5],
            "seconds": res.get("wall_seconds")}


def stage_ext(r: Runner, build: dict, budget: float) -> dict:
    """The CUDA extension: its rows of the check matrix and tests/test_cuda_gpu.py (after the JIT build)."""
    if r.dry_run:
        return {"status": "skipped", "reason": "no CUDA device (dry run): the extension needs one to build and run"}
    if build.get("status") != "ok":
        return {"status": "fail", "reason": f"JIT build: {build.get('status')}: {build.get('reason', '')}",
                "build": build}
    from sstkd.gpucheck.workers import is_training, matrix_cases
    from sstkd.ops import dispatch

    # verify's rows of the extension: every case of an op its table implements (whole, or some of
    # its passes); the training-shape case stays with the Triton matrix
    cases = [i for i, c in enumerate(matrix_cases(False))
             if dispatch.implements("cuda", c.spec.name) and not is_training(c.name, c.label)]
    out: dict = {"build_seconds": build.get("seconds"), "build": build.get("info")}

    def rows_job():
        spec = {"units": [{"cases": cases, "dtypes": ["fp32", "fp16", "bf16"],
                           "layouts": ["contiguous", "channels_last", "noncontig"]}], "backends": ["cuda"]}
        out["matrix"] = r.worker("ext-matrix", "matrix", spec, budget)

    def tests_job():
        out["pytest"] = r.command("ext-pytest", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p",
                                                 "no:cacheprovider", "tests/test_cuda_gpu.py"], budget)

    jobs = [threading.Thread(target=rows_job), threading.Thread(target=tests_job)]
    for t in jobs:
        t.start()
    for t in jobs:
        t.join()
    rows = [x for x in out["matrix"].get("rows", []) if x.get("kind") != "unit_done"]
    n_fail = sum(not x.get("ok") for x in rows)
    py = out["pytest"]
    summary = _last_line(py["output"])
    ok = (out["matrix"].get("status") == "ok" and rows and n_fail == 0 and py["rc"] == 0)
    return {"status": "ok" if ok else "fail", "matrix_rows": rows, "matrix_status": out["matrix"].get("status"),
            "matrix_reason": out["matrix"].get("reason", ""), "pytest_rc": py["rc"],
            "pytest_timed_out": py["timed_out"], "pytest_summary": summary, "pytest_output": py["output"][-20000:],
            "build_seconds": out["build_seconds"], "build_info": out["build"]}


def stage_sanitizer(r: Runner, budget: float, cuda_ext: bool) -> dict:
    from sstkd.gpucheck.workers import sanitizer_path

    if r.dry_run:
        return {"status": "skipped", "reason": "no CUDA device (dry run)"}
    tool = sanitizer_path()
    if tool is None:
        return {"status": "skipped", "reason": "compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)"}
    base = os.path.join(r.work, "sanitize")
    with open(base + ".spec.json", "w") as f:
        json.dump({"dry_run": False, "cuda_ext": cuda_ext}, f)
    env = r.env()
    env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"  # the caching allocator hides out-of-bounds accesses
    res: dict = {"tool": tool}
    t_end = time.monotonic() + budget
    for tool_name, extra in (("memcheck", []), ("racecheck", ["--racecheck-report", "hazard"])):
        left = t_end - time.monotonic()
        if left < 5:
            res[tool_name] = {"status": "timeout", "reason": "no time left in the stage's budget"}
            continue
        run = r.command(f"sanitizer-{tool_name}",
                        [tool, "--tool", tool_name, *extra, "--target-processes", "all", sys.executable, "-m",
                         "sstkd.gpucheck.workers", "sanitize_target", base + ".spec.json", base + f".{tool_name}.json"],
                        left / (2 if tool_name == "memcheck" else 1), env=env)
        m = re.search(r"ERROR SUMMARY:\s*(\d+)\s+error", run["output"])
        errors = int(m.group(1)) if m else None
        status = ("timeout" if run["timed_out"] else "ok" if errors == 0 and run["rc"] == 0
                  else "fail")
        res[tool_name] = {"status": status, "errors": errors, "rc": run["rc"], "seconds": run["seconds"],
                          "tail": "\n".join(run["output"].strip().splitlines()[-40:])}
    states = [res[t]["status"] for t in ("memcheck", "racecheck")]
    res["status"] = "ok" if all(s == "ok" for s in states) else "fail"
    return res


def _numel(shape) -> int:
    n = 1
    for v in shape:
        n *= int(v)
    return n


def static_key(op: str, params: str, shape) -> str:
    """Key of one op × params × shape (shapes compared by element count: (B, H·W) = (B, H, W))."""
    numel = _shape_cost(shape) if isinstance(shape, str) else _numel(shape)
    return f"{op}|{params}|{numel}"


def _written(path: str) -> tuple[str, str]:
    """Sort key of a static report: when ``sstkd cost`` wrote it (older files: none), then its name."""
    try:
        with open(path) as f:
            return str(json.load(f).get("written", "")), os.path.basename(path)
    except (OSError, ValueError, AttributeError):
        return "", os.path.basename(path)


def static_prediction(results_dir: str | None = None) -> dict:
    """Predicted fwd+bwd ms per op × params × shape from the newest ``bench/results/static-*.json``
    (written by ``sstkd cost``): rows ``{"op", "shape", "params", "dtype", "predicted": {"predicted_ms"}}``.
    Absent or unreadable: an empty table and the reason."""
    files = glob.glob(os.path.join(results_dir or os.path.join(REPO, "bench", "results"), "static-*.json"))
    if not files:
        return {"file": None, "by_op": {}}
    path = max(files, key=_written)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        return {"file": os.path.relpath(path, REPO), "error": str(e), "by_op": {}}
    found: dict[str, float] = {}

    def walk(o):
        if isinstance(o, dict):
            pred = o.get("predicted")
            ms = pred.get("predicted_ms") if isinstance(pred, dict) else o.get("predicted_ms")
            if isinstance(o.get("op"), str) and isinstance(o.get("shape"), list) and isinstance(ms, (int, float)) \
                    and o.get("dtype", "float32") in ("float32", "fp32"):
                params = o.get("params") or {}
                pstr = ", ".join(f"{k}={v}" for k, v in params.items()) if isinstance(params, dict) else str(params)
                found.setdefault(static_key(o["op"], pstr, o["shape"]), float(ms))
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(data)
    return {"file": os.path.relpath(path, REPO), "by_op": found}


# ----------------------------------------------------------------------------- summary


def _fmt_ms(v) -> str:
    return "—" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def timing_table(rows: list[dict], static: dict) -> list[str]:
    """op × mode rows with the median ms per backend and the best % of the copy bandwidth."""
    cells: dict[tuple, dict] = {}
    for x in rows:
        if x.get("status") != "ok":
            continue
        key = (x["op"], x.get("params", ""), x["shape"], x["mode"])
        cells.setdefault(key, {})[x["backend"]] = x
    out = ["| op | shape | mode | torch ms | triton ms | cuda ms | best % of copy BW | static prediction ms (fwd+bwd) |",
           "|---|---|---|---|---|---|---|---|"]
    for (op, params, shape, mode), by in cells.items():
        pct = max((b.get("pct_copy_bw") or 0.0 for b in by.values()), default=0.0)
        pred = static["by_op"].get(static_key(op, params, shape)) if mode == "fwd+bwd" else None
        name = op + (f" ({params})" if params else "")
        out.append(f"| {name} | {shape} | {mode} | " + " | ".join(_fmt_ms(by[b]["median_ms"]) if b in by else "—"
                                                                 for b in ("torch", "triton", "cuda"))
                   + f" | {pct:.1f} | {_fmt_ms(pred)} |")
    return out


def train_share(ts: dict) -> str:
    v = {x["name"]: x for x in ts.get("variants", []) if x.get("status") == "ok"}
    parts = [f"{n} {v[n]['median_ms']:.1f} ms" for n in ("student", "kd", "sstkd_reference", "sstkd_fused") if n in v]
    share = []
    for n, label in (("sstkd_fused", "fused"), ("sstkd_reference", "reference")):
        if n in v and "kd" in v and "student" in v:
            share.append(f"{label} {100 * (v[n]['median_ms'] - v['kd']['median_ms']) / v['student']['median_ms']:.1f}%")
    return (" · ".join(parts) or "no variant ran") + (
        f" → texture terms (str + sta) as a share of the student step: {', '.join(share)}" if share else "")


def stage_line(name: str, res: dict, budget) -> str:
    note = res.get("note") or res.get("reason", "")
    secs = res.get("wall_seconds", res.get("seconds"))
    return f"| {name} | {res.get('status', '?')} | {'' if secs is None else f'{secs:.0f}'} | {budget} | {note} |"


def write_summary(out: str, results: dict, budgets: dict) -> None:
    env = results["stages"].get("env", {})
    lines = [f"# GPU acceptance ({'dry run, CPU' if results['dry_run'] else env.get('device', '?')}) — "
             f"{results['started']}",
             "",
             f"commit {env.get('commit')} · torch {env.get('torch')} (CUDA {env.get('torch_cuda')}) · triton "
             f"{env.get('triton')} · Python {env.get('python')} · {env.get('cpus')} CPUs · "
             f"total {results['total_seconds']:.0f} s of {results['total_budget']} s",
             f"**Verdict: {results['verdict']}**" + (f" ({results['verdict_reason']})" if results["verdict_reason"] else ""),
             "", "| stage | status | s | budget s | result |", "|---|---|---|---|---|"]
    for name in ("env", "matrix", "ext", "determinism", "sanitizer", "timing", "train_step"):
        if name in results["stages"]:
            lines.append(stage_line(name, results["stages"][name], budgets.get(name, budgets.get("parallel"))))
    t = results["stages"].get("timing", {})
    if t.get("rows"):
        lines += ["", f"Op timings, fp32, median ms ({t.get('timer')}); copy bandwidth {t.get('copy_gbps', 0):.0f} GB/s; "
                  f"static prediction: {results['static']['file'] or 'none (no bench/results/static-*.json yet)'}", ""]
        lines += timing_table(t["rows"], results["static"])
    ts = results["stages"].get("train_step", {})
    if ts.get("variants"):
        lines += ["", f"Training step ({ts.get('config', {}).get('teacher')} → {ts.get('config', {}).get('student')}, "
                  f"batch {ts.get('config', {}).get('batch')}, crop {ts.get('config', {}).get('crop')}): {train_share(ts)}"]
    lines += ["", "Files: " + ", ".join(sorted(os.listdir(out)) + (["summary.md"] if "summary.md" not in os.listdir(out) else []))]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _notes(results: dict) -> None:
    """One-line result per stage for the summary table."""
    from sstkd.gpucheck.workers import is_training

    s = results["stages"]
    env = s.get("env", {})
    if env.get("status") == "ok":
        env["note"] = (f"{env.get('device')}" + (f", sm {env['capability']}, {env.get('sms')} SMs, "
                                                 f"{env.get('memory_gib')} GiB" if env.get("capability") else "")
                       + f"; compute-sanitizer: {env.get('compute_sanitizer') or 'not found'}")
    m = s.get("matrix", {})
    if "rows" in m:
        rows = m["rows"]
        train = [x for x in rows if is_training(str(x.get("op", "")), str(x.get("shape", "")))]
        tr = (f"; training shape nlevs=[3,3] {train[0]['shape']}: "
              f"{sum(bool(x.get('ok')) for x in train)}/{len(train)} pass") if train else "; training-shape case not run"
        m["note"] = (f"{sum(bool(x.get('ok')) for x in rows)}/{len(rows)} rows pass, {m.get('units_done')}/"
                     f"{m.get('units')} units in {m.get('shards')} processes{tr}"
                     + (f"; {'; '.join(m['shard_problems'])[:200]}" if m.get("shard_problems") else ""))
        warm_bad = [f"{k}: {v.get('status')} {v.get('reason', '')} {v.get('errors') or ''}".strip()
                    for k, v in m.get("warm", {}).items() if v.get("status") != "ok" or v.get("errors")]
        if warm_bad:
            m["note"] += "; warm-up: " + "; ".join(warm_bad)[:200]
    e = s.get("ext", {})
    if "matrix_rows" in e:
        rows = e["matrix_rows"]
        e["note"] = (f"JIT build {e.get('build_seconds')} s; {sum(bool(x.get('ok')) for x in rows)}/{len(rows)} "
                     f"matrix rows pass; pytest: {e.get('pytest_summary')}")
    d = s.get("determinism", {})
    if d.get("rows"):
        bad = [x["name"] for x in d["rows"] if not x.get("ok")]
        d["note"] = f"{len(d['rows']) - len(bad)}/{len(d['rows'])} bitwise equal run to run" + (
            f"; differ: {', '.join(bad)}" if bad else "")
        d["status"] = "ok" if not bad and d.get("status") == "ok" else "fail"
    z = s.get("sanitizer", {})
    if "memcheck" in z:
        z["note"] = "; ".join(f"{t}: {z[t].get('status')}, {z[t].get('errors')} errors" for t in ("memcheck", "racecheck"))
    t = s.get("timing", {})
    if t.get("rows"):
        ok = sum(x.get("status") == "ok" for x in t["rows"])
        err = [x for x in t["rows"] if x.get("status") == "error"]
        t["note"] = f"copy {t.get('copy_gbps', 0):.0f} GB/s; {ok} cells timed, {len(err)} errors"
        if err:
            t["status"] = "fail"
    ts = s.get("train_step", {})
    if ts.get("variants"):
        ts["note"] = train_share(ts)[:250]
        if any(v.get("status") == "error" for v in ts["variants"]):
            ts["status"] = "fail"


def write_files(out: str, results: dict, budgets: dict, runner: Runner) -> list[str]:
    from sstkd.verify import Row, format_rows

    os.makedirs(out, exist_ok=True)
    # matrix.txt: verify's table of every checked row (Triton and CUDA extension)
    rows = results["stages"].get("matrix", {}).get("rows", []) + results["stages"].get("ext", {}).get("matrix_rows", [])
    table_rows, errors = [], []
    for x in rows:
        if "fwd_err" in x:
            table_rows.append(Row(**{k: x[k] for k in ("op", "backend", "dtype", "shape", "layout", "fwd_err",
                                                        "fwd_tol", "grad_err", "grad_tol")}))
        else:
            errors.append(f"ERROR {x.get('op')} {x.get('backend')} {x.get('dtype')} {x.get('shape')} "
                          f"{x.get('layout')}: {x.get('error')}")
    with open(os.path.join(out, "matrix.txt"), "w") as f:
        f.write(format_rows(table_rows) + "\n" + "\n".join(errors) + "\n")
    san = results["stages"].get("sanitizer", {})
    if "memcheck" in san:
        with open(os.path.join(out, "sanitizer.txt"), "w") as f:
            for t in ("memcheck", "racecheck"):
                f.write(f"== compute-sanitizer --tool {t}: {san[t].get('status')}\n{san[t].get('tail', '')}\n\n")
    ext = results["stages"].get("ext", {})
    if "pytest_output" in ext:
        with open(os.path.join(out, "ext_tests.txt"), "w") as f:
            f.write(ext.pop("pytest_output"))
    with open(os.path.join(out, "logs.txt"), "w") as f:
        for name, text in runner.logs.items():
            tail = text[-6000:]
            f.write(f"===== {name} ({len(text)} chars{', last 6000' if len(text) > 6000 else ''})\n{tail}\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    write_summary(out, results, budgets)
    files = sorted(os.listdir(out))
    if len(files) > MAX_FILES:  # pragma: no cover - the writer above makes at most 6
        raise RuntimeError(f"out: {len(files)} files, more than {MAX_FILES}")
    return files


# ----------------------------------------------------------------------------- main


def default_out(dry_run: bool) -> str:
    date = _dt.date.today().strftime("%Y%m%d")
    if dry_run:
        return os.path.join(REPO, "runs", f"gpu-check-dry-run-{date}")
    try:
        import torch

        from sstkd.benchmarks.report import device_slug

        slug = device_slug("cuda") if torch.cuda.is_available() else "no-gpu"
    except Exception:
        slug = "unknown"
    return os.path.join(REPO, "bench", "results", f"gpu-{slug}-{date}")


def run(out: str | None, dry_run: bool, jobs: int | None, total_budget: float | None, log=print) -> int:
    t_start = time.monotonic()
    if not dry_run:
        import torch

        if not torch.cuda.is_available():
            log("gpu-check: no CUDA device here (torch.cuda.is_available() is False); "
                "on a CPU machine run `make gpu-check-dry-run` (--dry-run)")
            return 2
    budgets = DRY_BUDGETS if dry_run else GPU_BUDGETS
    total = total_budget or TOTAL_BUDGET["dry" if dry_run else "gpu"]
    out = os.path.abspath(out or default_out(dry_run))
    if os.path.isdir(out) and os.listdir(out):
        log(f"gpu-check: {out} exists and is not empty; results would be mixed")
        return 2
    # matrix shards + 2 warm-up processes + the extension's build (MAX_JOBS=4) share the cores
    jobs = jobs or (2 if dry_run else max(1, (os.cpu_count() or 8) - 6))
    # this process needs torch too (the matrix plan, the summary): import it while the first workers start
    threading.Thread(target=importlib.import_module, args=("sstkd.gpucheck.workers",), daemon=True).start()
    work = tempfile.mkdtemp(prefix="sstkd-gpucheck-")
    r = Runner(work, dry_run, t_start + total - 8)  # 8 s kept for writing the results
    results: dict = {"dry_run": dry_run, "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "total_budget": total, "budgets": budgets, "jobs": jobs,
                     "workers_start": "forked from one fork server" if r.fork else "fresh processes", "stages": {}}
    st = results["stages"]

    def say(name):
        res = st[name]
        log(f"gpu-check: {name}: {res.get('status')} {res.get('reason', '')}".rstrip())

    st["env"] = r.worker("env", "env", {}, budgets["env"])
    say("env")
    build: dict = {}

    def build_ext():
        if dry_run:
            build.update(status="skipped", reason="no CUDA device (dry run)")
            return
        env = r.env()
        env.setdefault("MAX_JOBS", "4")  # leave the other cores to the Triton compiles
        build.update(r.worker("ext-build", "ext_build", {}, budgets["ext_build"], env=env))

    ext_thread = threading.Thread(target=build_ext)
    st["matrix"] = stage_matrix(r, jobs, min(budgets["matrix"], r.left() - 150 if not dry_run else r.left()),
                                ext_thread.start)
    say("matrix")

    par: dict = {}
    group_end = time.monotonic() + min(budgets["parallel"], max(1.0, r.left()))

    def ext_job():
        ext_thread.join(timeout=max(1.0, group_end - time.monotonic()))
        if ext_thread.is_alive():
            par["ext"] = {"status": "timeout", "reason": "the JIT build did not finish within its budget"}
            return
        par["ext"] = stage_ext(r, build, max(1.0, group_end - time.monotonic()))

    def det_job():
        par["determinism"] = r.worker("determinism", "determinism", {}, max(1.0, group_end - time.monotonic()))

    def san_job():
        # the CUDA ops join the sanitized program only if the extension is already built by now
        par["sanitizer"] = stage_sanitizer(r, max(1.0, group_end - time.monotonic()),
                                           cuda_ext=build.get("status") == "ok")

    threads = [threading.Thread(target=f) for f in (ext_job, det_job, san_job)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in ("ext", "determinism", "sanitizer"):
        st[k] = par.get(k, {"status": "error", "reason": "did not run"})
        say(k)
    st["timing"] = r.worker("timing", "timing", {"backends": ["torch", "triton", "cuda"]
                                                 if build.get("status") == "ok" else ["torch", "triton"]},
                            budgets["timing"])
    say("timing")
    st["train_step"] = r.worker("train-step", "train_step", {}, budgets["train_step"])
    say("train_step")
    r.close()
    results["static"] = static_prediction()
    _notes(results)
    failed = [k for k, v in st.items() if v.get("status") not in ("ok", "skipped")]
    results["verdict"] = "PASS" if not failed else "FAIL"
    results["verdict_reason"] = ("failed: " + ", ".join(failed)) if failed else (
        "dry run: GPU-only stages skipped" if dry_run else "")
    results["total_seconds"] = round(time.monotonic() - t_start, 1)
    files = write_files(out, results, budgets, r)
    shutil.rmtree(work, ignore_errors=True)
    log(f"gpu-check: {results['verdict']} in {results['total_seconds']:.0f} s; results in {out} ({len(files)} files)")
    return 0 if not failed else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="results folder (default bench/results/gpu-<device>-<date>/; "
                                 "dry run: runs/gpu-check-dry-run-<date>/); must be new or empty")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, Triton interpreter, tiny shapes; GPU-only stages are skipped with the reason")
    p.add_argument("--jobs", type=int, default=None, help="parallel processes of the matrix stage (default: CPUs - 6)")
    p.add_argument("--budget", type=float, default=None, help="total seconds (default 420; dry run 120)")


def main(args) -> int:
    if args.jobs is not None and args.jobs < 1:
        print(f"--jobs: must be >= 1, got {args.jobs}")
        return 2
    if args.budget is not None and not args.budget > 0:
        print(f"--budget: must be > 0, got {args.budget}")
        return 2
    return run(args.out, args.dry_run, args.jobs, args.budget)
