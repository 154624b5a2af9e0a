"""Run the fuzz targets: ``python -m tests.fuzz.run [--runs N | --seconds S] [TARGET ...]``.

Each target is its own process (libFuzzer through atheris, coverage of ``nodeagent`` and
``sidecar_lite``), started on a fresh working corpus seeded by ``seeds.py`` (or ``--corpus DIR``,
kept between runs), with a per-input timeout and an RSS limit, so unbounded work or memory is a
finding like a crash. Prints, per target, the inputs executed, the time, the rate, the peak RSS and
the corpus it grew; exits 1 if any target found something, naming the artifact and the command
that replays it (``python -m tests.fuzz.fuzz_<target> ARTIFACT``).

The long run reported in the README: ``.venv/bin/python -m tests.fuzz.run --runs 1000000``.

Targets (the module docstrings say what each checks):

| target | outside input | code |
|---|---|---|
| wire | a pod's tunnel datagram | ``wire.vxlan``, ``wire.headers``, ``wire.normalize`` |
| pipeline | the same, through every stage | ``pipeline`` and ``stages/*`` |
| transport | a collector client's byte stream | ``transport.{messages,compression,records,streams}`` |
| records | a batch body | ``transport.records`` |
| admission | an AdmissionReview | ``webhook.review``, ``webhook.inject`` |
| config | the agent's configuration file | ``settings``, ``stages.filters`` (+ libpcap) |
| pushdown | the push-down answer a sidecar accepts | ``sidecar_lite.rules``, ``sidecar_lite.bpf`` |
| kube_pods | pod objects from the Kubernetes watch | ``pods.kube``, ``pods.index`` |
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fuzz import seeds

TARGETS = tuple(seeds.SEEDS)
MAX_LEN = {"wire": 65536, "pipeline": 24000, "transport": 65536, "records": 65536}
"""Longest input per target (libFuzzer's -max_len; 4096 for the others): a 64 KB datagram."""
ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Result:
    target: str
    ok: bool
    """No artifact (crash, timeout, RSS limit) and libFuzzer exited 0."""
    runs: int
    """Inputs executed (libFuzzer's ``number_of_executed_units``)."""
    seconds: float
    peak_rss_mb: int
    corpus: int
    artifacts: list[str]
    log: str
    """The finding (Python exception or libFuzzer report) when not ``ok``."""


def run_target(target: str, workdir: Path, *, runs: int | None, seconds: int | None,
               corpus: Path | None = None) -> Result:
    seed_dir = workdir / target / "seeds"
    seeds.write(target, seed_dir)
    corpus = corpus or workdir / target / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts = workdir / target / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    limit = [f"-runs={runs}"] if runs is not None else [f"-max_total_time={seconds}"]
    cmd = [sys.executable, "-m", f"tests.fuzz.fuzz_{target}", str(corpus), str(seed_dir), *limit,
           f"-max_len={MAX_LEN.get(target, 4096)}", "-timeout=10", "-rss_limit_mb=2048",
           f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", done.stderr, re.M))
    found = sorted(str(p) for p in artifacts.iterdir())
    return Result(target, done.returncode == 0 and not found, int(stats.get("number_of_executed_units", 0)),
                  round(elapsed, 1), int(stats.get("peak_rss_mb", 0)), len(list(corpus.iterdir())), found,
                  _finding(done.stderr) if done.returncode else "")


def _finding(log: str) -> str:
    """The Python exception (or libFuzzer's report) of a failed run, without the progress lines."""
    start = log.find("=== Uncaught Python exception")
    start = start if start >= 0 else max(log.find("==ERROR"), log.find("ERROR: libFuzzer"), 0)
    return log[start:start + 3000]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.split("\n\n")[0])
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--runs", type=int, help="inputs per target (the long run: 1000000)")
    limit.add_argument("--seconds", type=int, default=None, help="seconds per target (default 10)")
    parser.add_argument("--corpus", type=Path, help="keep each target's corpus in DIR/<target>")
    parser.add_argument("--workdir", type=Path, help="seeds and artifacts here (default: a temporary dir)")
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], default=[], metavar="TARGET")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.runs is not None or args.seconds is not None else 10
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pmfuzz-"))
    failed = False
    print(f"{'target':10} {'inputs':>10} {'seconds':>8} {'inputs/s':>9} {'peak RSS':>9} {'corpus':>7}")
    try:
        for target in args.targets or TARGETS:
            corpus = args.corpus / target if args.corpus else None
            r = run_target(target, workdir, runs=args.runs, seconds=seconds if args.runs is None else None,
                           corpus=corpus)
            rate = r.runs / max(r.seconds, 0.1)
            print(f"{target:10} {r.runs:>10} {r.seconds:>8} {rate:>9.0f} {r.peak_rss_mb:>6} MB"
                  f" {r.corpus:>7}{'' if r.ok else '  FAILED'}", flush=True)
            if not r.ok:
                failed = True
                for artifact in r.artifacts:
                    print(f"  replay: {sys.executable} -m tests.fuzz.fuzz_{target} {artifact}")
                print(r.log)
    finally:
        if args.workdir is None and not failed:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
