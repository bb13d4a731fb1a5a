"""One-command fuzz campaign over every target in :mod:`tests.fuzz.targets`.

    python3 -m tests.fuzz.campaign --inputs 1000000            # ~all cores, atheris if present
    python3 -m tests.fuzz.campaign --inputs 20000 --engine hypothesis --targets proto,onion
    python3 -m tests.fuzz.campaign --replay relay fuzz-out/failures/relay-1a2b3c.bin

The inputs are shared out by each target's weight (cheap targets get more) and split into
shards run by ``--jobs`` worker processes. A worker runs one shard with atheris (coverage-guided
libFuzzer over the instrumented ``bridge``, ``h2``, ``hpack`` and ``hyperframe`` code plus the
harness; corpus kept in ``<out>/corpus/<target>``) or, without atheris, hypothesis
(``max_examples`` = the shard, ``derandomize=False``, generate phase only). A failing input does not
stop the run: it is written to ``<out>/failures/<target>-<hash>.bin`` with its traceback in
``.txt`` (one file per distinct failure), and the campaign exits 1 at the end.

Progress is printed every ``--interval`` seconds; the summary (inputs per target, inputs/s, wall
time, failures) is printed and written to ``<out>/summary.json``.

Nothing here imports the code under test at module level: an atheris worker has to instrument it
before the first import.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import random
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

DEFAULT_OUT = "fuzz-out"
STATUS_EVERY = 2.0  # seconds between a worker's status writes
MAX_FAILURE_FILES = 50  # distinct failures saved per shard
#: CPU bounds of the targets (tests/fuzz/targets.py BOUNDS) are multiplied by this under atheris
ATHERIS_COST_SCALE = 5.0


# ---------------------------------------------------------------------------------------------
# Worker


@dataclass
class _WorkerState:
    target: str
    shard: int
    runs: int
    out: Path
    count: int = 0
    failures: int = 0
    signatures: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    last_write: float = 0.0
    slowest: float = 0.0

    @property
    def status_path(self) -> Path:
        return self.out / "status" / f"{self.target}-{self.shard}.json"

    def write_status(self, done: bool = False) -> None:
        now = time.monotonic()
        self.last_write = now
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "target": self.target, "shard": self.shard, "runs": self.runs, "count": self.count,
            "failures": self.failures, "distinct": len(self.signatures),
            "elapsed": now - self.started, "slowest": self.slowest, "done": done,
        }))
        tmp.replace(self.status_path)

    def record(self, data: bytes, exc: BaseException) -> None:
        self.failures += 1
        sig = _signature(exc)
        self.signatures[sig] = self.signatures.get(sig, 0) + 1
        if self.signatures[sig] > 1 or len(self.signatures) > MAX_FAILURE_FILES:
            return
        digest = hashlib.sha1(data).hexdigest()[:12]
        base = self.out / "failures" / f"{self.target}-{digest}"
        base.with_suffix(".bin").write_bytes(data)
        base.with_suffix(".txt").write_text(
            f"target: {self.target}\nsignature: {sig}\ninput (hex): {data.hex()}\n"
            f"replay: python3 -m tests.fuzz.campaign --replay {self.target} "
            f"{base.with_suffix('.bin')}\n\n" + "".join(traceback.format_exception(exc)))
        print(f"[{self.target}#{self.shard}] FAILURE {sig} -> {base}.bin", flush=True)


def _signature(exc: BaseException) -> str:
    """Failure identity: the violation text without numbers, plus where the cause was raised."""
    text = str(exc).split("\n")[0]
    text = "".join("#" if c.isdigit() else c for c in text)[:120]
    where = ""
    cause = exc.__cause__
    if cause is not None and cause.__traceback__ is not None:
        frames = traceback.extract_tb(cause.__traceback__)
        if frames:
            f = frames[-1]
            where = f" @ {Path(f.filename).name}:{f.lineno}"
    return text + where


def _one(state: _WorkerState, fn: Callable[[bytes], None], violation: type[BaseException],
         data: bytes) -> None:
    state.count += 1
    t0 = time.perf_counter()
    try:
        fn(data)
    except violation as exc:
        state.record(data, exc)
    dt = time.perf_counter() - t0
    if dt > state.slowest:
        state.slowest = dt
    if time.monotonic() - state.last_write > STATUS_EVERY:
        state.write_status()


def _load_atheris(install: bool) -> ModuleType | None:
    try:
        return importlib.import_module("atheris")
    except ImportError:
        pass
    if not install:
        return None
    print("atheris is not installed; trying `pip install atheris` (the `fuzz` extra)...",
          flush=True)
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "atheris"],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        print(f"pip install atheris failed ({res.stderr.strip()[-300:]}); using hypothesis",
              flush=True)
        return None
    importlib.invalidate_caches()
    try:
        return importlib.import_module("atheris")
    except ImportError:
        return None


def _seed_corpus(corpus: Path, max_size: int) -> None:
    """The empty input (the happy path) and a few random ones of growing size."""
    (corpus / "seed-empty").write_bytes(b"")
    rng = random.Random(len(str(corpus)))
    size = 8
    while size <= max_size:
        for i in range(3):
            (corpus / f"seed-{size}-{i}").write_bytes(rng.randbytes(size))
        size *= 2


def run_worker(args: argparse.Namespace) -> int:
    out = Path(args.out)
    state = _WorkerState(args.worker, args.shard, args.runs, out)
    if args.engine == "atheris":
        atheris: Any = importlib.import_module("atheris")
        with atheris.instrument_imports(include=["bridge", "h2", "hpack", "hyperframe", "tests"]):
            targets = importlib.import_module("tests.fuzz.targets")
        vars(targets)["COST_SCALE"] = ATHERIS_COST_SCALE  # instrumented code is slower
    else:
        targets = importlib.import_module("tests.fuzz.targets")
    target = targets.TARGETS[args.worker]
    violation = targets.ContractViolation
    state.write_status()

    if args.engine == "atheris":
        corpus = out / "corpus" / target.name
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            _seed_corpus(corpus, target.max_size)

        def test_one(data: bytes) -> None:
            _one(state, target.fn, violation, data)
            if state.count >= state.runs:
                state.write_status(done=True)
                sys.stdout.flush()
                os._exit(0)  # libFuzzer would otherwise keep going

        # -len_control=0: full-size inputs from the start (the structure needs bytes)
        argv = [sys.argv[0], f"-runs={state.runs * 4}", f"-max_len={target.max_size}",
                "-len_control=0",
                f"-seed={args.seed}", "-rss_limit_mb=4096", "-timeout=120",
                "-print_final_stats=0", "-reload=30", str(corpus)]
        atheris.Setup(argv, test_one)
        atheris.Fuzz()
        state.write_status(done=True)
        return 0

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=state.runs, derandomize=False, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=target.max_size))
    def run(data: bytes) -> None:
        _one(state, target.fn, violation, data)

    while state.count < state.runs:  # hypothesis may stop early on a small input space
        before = state.count
        run()
        if state.count == before:
            break
    state.write_status(done=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Parent


@dataclass
class _Shard:
    target: str
    index: int
    runs: int
    proc: subprocess.Popen[bytes] | None = None
    status: dict[str, Any] = field(default_factory=dict)
    returncode: int | None = None


def _allocate(total: int, weights: dict[str, float]) -> dict[str, int]:
    s = sum(weights.values())
    out = {name: max(1, int(total * w / s)) for name, w in weights.items()}
    first = next(iter(out))
    out[first] += max(0, total - sum(out.values()))  # rounding remainder
    return out


def _read_status(shard: _Shard, out: Path) -> None:
    p = out / "status" / f"{shard.target}-{shard.index}.json"
    try:
        shard.status = json.loads(p.read_text())
    except (OSError, ValueError):
        pass


def _fmt_rate(n: float, dt: float) -> str:
    return f"{n / dt:,.0f}/s" if dt > 0 else "-"


def run_campaign(args: argparse.Namespace) -> int:
    targets_mod = importlib.import_module("tests.fuzz.targets")
    registry = targets_mod.TARGETS
    names = args.targets.split(",") if args.targets else list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        print(f"unknown targets: {unknown}; known: {list(registry)}", file=sys.stderr)
        return 2
    engine = args.engine
    if engine in ("auto", "atheris"):
        found = _load_atheris(install=not args.no_install)
        if found is None and engine == "atheris":
            print("atheris unavailable (pip install '.[fuzz]')", file=sys.stderr)
            return 2
        engine = "atheris" if found is not None else "hypothesis"
    out = Path(args.out)
    for sub in ("status", "failures", "logs", "corpus"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for old in (out / "status").glob("*.json"):
        old.unlink()
    budget = _allocate(args.inputs, {n: registry[n].weight for n in names})
    shards: list[_Shard] = []
    for name in names:
        k = max(1, min(args.jobs, budget[name] // 5000))
        for i in range(k):
            shards.append(_Shard(name, i, budget[name] // k + (budget[name] % k if i == 0
                                                                  else 0)))
    # slowest targets first so the pool ends together
    order = {n: i for i, n in enumerate(sorted(names, key=lambda n: registry[n].weight))}
    queue = sorted(shards, key=lambda s: (order[s.target], s.index))
    print(f"fuzz campaign: {args.inputs:,} inputs over {len(names)} targets, engine {engine}, "
          f"{args.jobs} jobs, output {out}/", flush=True)
    for name in names:
        print(f"  {name:<18} {budget[name]:>9,} inputs", flush=True)
    started = time.monotonic()
    running: list[_Shard] = []
    last_report = 0.0
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")])
    try:
        while queue or running:
            while queue and len(running) < args.jobs:
                sh = queue.pop(0)
                log = (out / "logs" / f"{sh.target}-{sh.index}.log").open("wb")
                cmd = [sys.executable, "-m", "tests.fuzz.campaign", "--worker", sh.target,
                       "--shard", str(sh.index), "--runs", str(sh.runs), "--engine", engine,
                       "--out", str(out), "--seed", str(args.seed + 7919 * sh.index + 1)]
                sh.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                log.close()
                running.append(sh)
            time.sleep(0.5)
            for sh in list(running):
                assert sh.proc is not None
                rc = sh.proc.poll()
                if rc is not None:
                    sh.returncode = rc
                    running.remove(sh)
                    _read_status(sh, out)
                    if rc != 0 or not sh.status.get("done"):
                        print(f"  ! worker {sh.target}#{sh.index} exited with {rc} "
                              f"(log: {out}/logs/{sh.target}-{sh.index}.log)", flush=True)
            now = time.monotonic()
            if now - last_report >= args.interval:
                last_report = now
                for sh in running:
                    _read_status(sh, out)
                _progress(shards, args.inputs, now - started)
    except KeyboardInterrupt:
        print("interrupted; stopping workers", flush=True)
        for sh in running:
            if sh.proc is not None:
                sh.proc.terminate()
        for sh in running:
            if sh.proc is not None:
                sh.proc.wait()
    wall = time.monotonic() - started
    for sh in shards:
        _read_status(sh, out)
    return _summary(shards, names, budget, engine, args, wall, out)


def _progress(shards: list[_Shard], total: int, elapsed: float) -> None:
    done = sum(int(s.status.get("count", 0)) for s in shards)
    fails = sum(int(s.status.get("failures", 0)) for s in shards)
    per: dict[str, int] = {}
    for s in shards:
        per[s.target] = per.get(s.target, 0) + int(s.status.get("count", 0))
    parts = " ".join(f"{n}={c:,}" for n, c in per.items() if c)
    print(f"[{elapsed:6.0f}s] {done:,}/{total:,} inputs ({100 * done / max(total, 1):.1f}%), "
          f"{_fmt_rate(done, elapsed)}, failures {fails} | {parts}", flush=True)


def _summary(shards: list[_Shard], names: list[str], budget: dict[str, int], engine: str,
             args: argparse.Namespace, wall: float, out: Path) -> int:
    rows = []
    total = fails = 0
    for name in names:
        mine = [s for s in shards if s.target == name]
        count = sum(int(s.status.get("count", 0)) for s in mine)
        failures = sum(int(s.status.get("failures", 0)) for s in mine)
        busy = max((float(s.status.get("elapsed", 0.0)) for s in mine), default=0.0)
        cpu = sum(float(s.status.get("elapsed", 0.0)) for s in mine)
        slowest = max((float(s.status.get("slowest", 0.0)) for s in mine), default=0.0)
        ok = all(s.returncode == 0 and s.status.get("done") for s in mine)
        rows.append({"target": name, "inputs": count, "planned": budget[name],
                     "failures": failures, "worker_seconds": round(cpu, 1),
                     "inputs_per_worker_second": round(count / cpu, 1) if cpu else None,
                     "wall_seconds": round(busy, 1), "slowest_input_s": round(slowest, 3),
                     "shards": len(mine), "completed": ok})
        total += count
        fails += failures
    failure_files = sorted(p.name for p in (out / "failures").glob("*.bin"))
    summary = {"engine": engine, "jobs": args.jobs, "inputs": total, "planned": args.inputs,
               "wall_seconds": round(wall, 1), "inputs_per_second": round(total / wall, 1)
               if wall else None, "failures": fails, "failure_files": failure_files,
               "targets": rows, "python": sys.version.split()[0], "cpus": os.cpu_count()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{'target':<18} {'inputs':>10} {'failures':>8} {'worker-s':>9} {'inputs/s':>9} "
          f"{'slowest':>8}")
    for r in rows:
        rate = r["inputs_per_worker_second"]
        print(f"{r['target']:<18} {r['inputs']:>10,} {r['failures']:>8} "
              f"{r['worker_seconds']:>9} {rate if rate is not None else '-':>9} "
              f"{r['slowest_input_s']:>7}s" + ("" if r["completed"] else "  (incomplete)"))
    print(f"{'total':<18} {total:>10,} {fails:>8}   wall {wall:.0f}s, "
          f"{_fmt_rate(total, wall)} overall, engine {engine}, {args.jobs} jobs")
    print(f"summary: {out}/summary.json" + (f"; failing inputs in {out}/failures/"
                                           if fails else ""))
    complete = all(r["completed"] for r in rows)
    return 1 if fails or not complete else 0


def replay(target_name: str, files: list[str]) -> int:
    targets = importlib.import_module("tests.fuzz.targets")
    fn = targets.TARGETS[target_name].fn
    status = 0
    for f in files:
        data = Path(f).read_bytes()
        try:
            fn(data)
            print(f"{f}: ok")
        except targets.ContractViolation:
            status = 1
            print(f"{f}: VIOLATION")
            traceback.print_exc()
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tests.fuzz.campaign", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=1_000_000, help="total inputs (default 1M)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    p.add_argument("--targets", default="", help="comma-separated subset of targets")
    p.add_argument("--out", default=DEFAULT_OUT, help="output directory (default fuzz-out)")
    p.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    p.add_argument("--interval", type=float, default=15.0, help="seconds between progress lines")
    p.add_argument("--no-install", action="store_true", help="never pip-install atheris")
    p.add_argument("--replay", nargs="+", metavar=("TARGET", "FILE"),
                   help="run TARGET on saved inputs and report")
    # worker mode (internal)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--shard", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--runs", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.replay:
        return replay(args.replay[0], args.replay[1:])
    if args.worker:
        return run_worker(args)
    return run_campaign(args)


if __name__ == "__main__":
    sys.exit(main())
