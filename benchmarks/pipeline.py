"""Orchestration overhead and caching of the build, measured in one run.

    .venv/bin/python benchmarks/pipeline.py [--repeat 3]
    .venv/bin/python benchmarks/pipeline.py --workers

(a) `tapeout run` against a running Prefect server vs the same stages called as plain
    functions, each in a fresh process with a fresh home: the ratio is what Prefect costs.
(b) a rebuild in a new process vs the first build: the same commit (found registered, nothing
    runs) and a new commit that changes nothing the build reads (every stage cached, a new
    version signed and registered).
(c) with `--workers`: six commits, emitted as `model.committed` at once, built by a process
    work pool of one worker vs two (infra/local/work_pool.py, as tests/integration/
    test_workers.py runs it), each worker with its own empty home, registering on the MLflow
    server; each pool on fresh servers. Reported: the ratio of the wall times, from the first
    event to the last flow run's end, and the cross-worker cache hit rate of the two-worker
    pool: of the stages a worker did not have in its home, the share it fetched from the stage
    store (built by the other worker) instead of building (at most 0.5 when two workers need
    the same stages: each is built once).
The targets it is read against: overhead <= 1.3x; cached rebuild <= 0.25x of the first build.

The servers come from infra/local/services.sh (PostgreSQL, Prefect, MLflow); the build uses
the example model with its `cpu` target only, so the numbers are about orchestration, not
about a compiler.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
EXAMPLE = REPOSITORY / "examples" / "digits"


def make_project(root: Path) -> Path:
    project = root / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    pipeline = project / "pipeline.yaml"
    text = pipeline.read_text()
    # Keep the cpu target only.
    text = re.sub(r"\n  - name: (?!cpu\n).*?(?=\ngates:)", "\n", text, flags=re.S)
    pipeline.write_text(text)
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "benchmark")
    return pipeline


def git(folder: Path, *arguments: str) -> str:
    environment = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.invalid",
                   "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.invalid"}
    return subprocess.run(["git", "-C", str(folder), *arguments], check=True, capture_output=True,
                          text=True, env=environment).stdout.strip()


def timed(command: list[str], environment: dict[str, str]) -> float:
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return elapsed


def plain_build(pipeline_file: Path, home: Path) -> None:
    """Every stage of one build as plain function calls: no Prefect, no cache."""
    from tapeout.artifacts.registry import Registry
    from tapeout.flows import environment, evidence, stages
    from tapeout.flows.config import load_pipeline
    from tapeout.flows.settings import settings_for
    from tapeout.flows.source import checkout

    environment.configure(home)
    pipeline = load_pipeline(pipeline_file)
    with checkout(pipeline.path, None, home) as files:
        source = files.source(pipeline)
    settings = settings_for(pipeline, home, lambda message: None)
    registry = Registry(settings.tracking_uri, home / "artifacts")
    work = home / "plain"
    export_inputs = evidence.export_inputs(pipeline, home)
    model = stages.export_stage(pipeline, work / "export")
    samples = stages.calibration_set(pipeline, model)
    calibrated = stages.calibrate_stage(pipeline, model, samples, work / "calibrate")
    quantized = stages.quantize_stage(model, calibrated, work / "quantize")
    validation = stages.validation_set(pipeline, model)
    reference = stages.reference_stage(model, validation, work / "reference")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for target in pipeline.config.targets:
        artifact = stages.compile_stage(quantized, pipeline.target_profile(target), work / "compile" / target.name)
        evaluation = stages.evaluate_stage(artifact, validation, reference)
        gated = stages.gate_stage(pipeline, target, evaluation)
        bundle = stages.bundle_stage(
            pipeline=pipeline, target=target, model=model, quantized=quantized, calibrated=calibrated,
            artifact=artifact, gated=gated, source=source, invocation_id="plain", started_on=now,
            finished_on=now, bundles_root=home / "bundles", private_key=settings.private_key,
            chain=evidence.chain_inputs(pipeline, export_inputs, validation),
        )
        tags = stages.version_tags(pipeline, target, source, artifact, calibrated, bundle, settings.private_key)
        stages.register_stage(registry, pipeline, target, source, artifact, gated, bundle, tags)


def pool_build(scratch: Path, workers: int, commits: int) -> dict[str, float]:
    """`commits` commits emitted at once and built by a pool of `workers` workers on fresh
    servers: the seconds from the first event to the last run's end, and the stage store's
    counts (entries built; fetches by a worker other than the builder)."""
    sys.path.insert(0, str(REPOSITORY / "infra" / "local"))
    import work_pool

    from tapeout.artifacts.keys import init_keys
    from tapeout.artifacts.registry import Registry
    from tapeout.artifacts.stage_store import StageStore
    from tapeout.artifacts.worker_key import KEY_VARIABLE

    services = scratch / "services"
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    environment.pop("TAPEOUT_HOME", None)
    subprocess.run([str(REPOSITORY / "infra/local/services.sh"), "start", str(services)], check=True,
                   env=environment, stdout=subprocess.DEVNULL)
    pool = []
    try:
        urls = dict(line.split("=", 1) for line in (services / "services.env").read_text().split())
        environment["PREFECT_API_URL"] = urls["PREFECT_API_URL"]
        pipeline = make_project(scratch)
        pipeline.write_text(pipeline.read_text().replace(
            "registry: {}", f"registry:\n  tracking_uri: {urls['MLFLOW_TRACKING_URI']}"))
        shas = []
        for bound in range(50 - commits, 50):  # each commit a new gate: every stage is shared
            pipeline.write_text(re.sub(r"latency_p95_ms: \{max: \d+\}", f"latency_p95_ms: {{max: {bound}}}",
                                       pipeline.read_text()))
            git(pipeline.parent, "commit", "-qam", f"gate {bound}")
            shas.append(git(pipeline.parent, "rev-parse", "HEAD"))
        key = init_keys(scratch / "secrets")[0]
        work_pool.deploy(environment)
        for index in range(workers):
            pool.append(work_pool.start_worker(
                f"worker-{index}", scratch / f"home-{index}",
                {**environment, KEY_VARIABLE: key.private_key.read_text()}, scratch / f"worker-{index}.log",
            ))
        work_pool.wait_online(environment["PREFECT_API_URL"], pool, seconds=300)
        start = time.perf_counter()
        work_pool.emit(pipeline.parent, "pipeline.yaml", shas, environment)
        runs = work_pool.wait_for_runs(environment["PREFECT_API_URL"], shas, pool, seconds=3600)
        elapsed = time.perf_counter() - start
        if {run["state_type"] for run in runs} != {"COMPLETED"}:
            raise SystemExit(f"{workers} worker(s): not every build completed: {[run['state_type'] for run in runs]}")
        uses = StageStore(Registry(urls["MLFLOW_TRACKING_URI"], scratch / "reader")).uses()
    finally:
        work_pool.stop_workers(pool)
        subprocess.run([str(REPOSITORY / "infra/local/services.sh"), "stop", str(services)], env=environment)
    return {"seconds": elapsed, "built": len(uses), "fetched_elsewhere": sum(use.used_elsewhere for use in uses)}


def workers_benchmark(commits: int) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="tapeout-bench-workers-"))
    try:
        one = pool_build(scratch / "one", 1, commits)
        two = pool_build(scratch / "two", 2, commits)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    hit_rate = two["fetched_elsewhere"] / (two["built"] + two["fetched_elsewhere"])
    report = {
        "commits": commits, "one_worker": one, "two_workers": two,
        "two_vs_one_worker": two["seconds"] / one["seconds"], "cross_worker_hit_rate": hit_rate,
    }
    print(f"{'pool':<34}{'s':>10}{'ratio':>10}")
    print(f"{f'{commits} commits, one worker':<34}{one['seconds']:>10.2f}{1:>10.2f}")
    print(f"{f'{commits} commits, two workers':<34}{two['seconds']:>10.2f}{report['two_vs_one_worker']:>10.2f}  vs one worker")
    print(f"cross-worker cache hit rate (two workers): {hit_rate:.2f} "
          f"({two['fetched_elsewhere']} fetched from the other worker, {two['built']} built)")
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", action="store_true", help="(c): a pool of one worker vs two")
    parser.add_argument("--commits", type=int, default=6, help="commits built by the pools (c)")
    parser.add_argument("--plain", nargs=2, metavar=("PIPELINE", "HOME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        plain_build(Path(args.plain[0]), Path(args.plain[1]))
        return
    if args.workers:
        workers_benchmark(args.commits)
        return

    scratch = Path(tempfile.mkdtemp(prefix="tapeout-bench-"))
    services = scratch / "services"
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run([str(REPOSITORY / "infra/local/services.sh"), "start", str(services)], check=True,
                   env=environment, stdout=subprocess.DEVNULL)
    try:
        urls = dict(line.split("=", 1) for line in (services / "services.env").read_text().split())
        environment["PREFECT_API_URL"] = urls["PREFECT_API_URL"]
        tapeout = [sys.executable, "-m", "tapeout.flows.cli"]
        rows: dict[str, list[float]] = {"plain": [], "prefect": [], "same commit": [], "new commit": []}
        for attempt in range(args.repeat):
            pipeline = make_project(scratch / f"run{attempt}")
            rows["plain"].append(timed(
                [sys.executable, __file__, "--plain", str(pipeline), str(scratch / f"plain-home{attempt}")],
                environment))
            home = scratch / f"home{attempt}"
            rows["prefect"].append(timed([*tapeout, "run", str(pipeline), "--home", str(home)], environment))
            rows["same commit"].append(timed([*tapeout, "run", str(pipeline), "--home", str(home)], environment))
            (pipeline.parent / "NOTES.md").write_text(f"unrelated change {attempt}\n")
            git(pipeline.parent, "add", "-A")
            git(pipeline.parent, "commit", "-qm", "notes")
            rows["new commit"].append(timed([*tapeout, "run", str(pipeline), "--home", str(home)], environment))
    finally:
        subprocess.run([str(REPOSITORY / "infra/local/services.sh"), "stop", str(services)], env=environment)
        shutil.rmtree(scratch, ignore_errors=True)

    median = {name: statistics.median(values) for name, values in rows.items()}
    report = {
        "seconds_median": median,
        "orchestration_overhead": median["prefect"] / median["plain"],
        "rebuild_same_commit_vs_first": median["same commit"] / median["prefect"],
        "rebuild_new_commit_cached_vs_first": median["new commit"] / median["prefect"],
        "repeat": args.repeat,
    }
    print(f"{'build':<34}{'median s':>10}{'ratio':>10}")
    print(f"{'plain functions (no Prefect)':<34}{median['plain']:>10.2f}{1:>10.2f}")
    print(f"{'tapeout run, Prefect server':<34}{median['prefect']:>10.2f}{report['orchestration_overhead']:>10.2f}  vs plain (bar <= 1.3)")
    print(f"{'rebuild, same commit':<34}{median['same commit']:>10.2f}{report['rebuild_same_commit_vs_first']:>10.2f}  vs first (bar <= 0.25)")
    print(f"{'rebuild, new commit, all cached':<34}{median['new commit']:>10.2f}{report['rebuild_new_commit_cached_vs_first']:>10.2f}  vs first")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
