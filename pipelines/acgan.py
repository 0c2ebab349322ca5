"""The Kubeflow pipeline: ingest -> split -> train (one GPU pod per split) -> monitor ->
evaluate -> (gate passed) register.

``acgan compile`` compiles it to ``pipelines/acgan.yaml`` (committed; a test keeps it in
sync); ``python -m pipelines.acgan --local`` runs the whole DAG on this machine through
``kfp.local``; ``acgan submit`` sends the compiled file to a cluster. The pipeline's
parameters (names, types, defaults, help) come from one table,
:data:`acgan.kfp_runtime.PARAMETERS`, which ``acgan submit`` also reads.

The split plan is only known after the split task, so the training fan-out is a
``dsl.ParallelFor`` over that task's output. Its ``parallelism`` is fixed when the pipeline is
compiled (KFP 2.17 rejects a pipeline parameter there): ``acgan compile --parallelism N``.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's real types.
import argparse
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kfp import compiler, dsl, kubernetes

from acgan.kfp_runtime import CONFIG_PARAMETERS, PARAMETERS, VOLUME_MOUNT
from components.evaluate import evaluate as evaluate_op
from components.evaluate import judge as judge_op
from components.ingest import ingest as ingest_op
from components.monitor import monitor as monitor_op
from components.register import register as register_op
from components.split import split as split_op
from components.train import train as train_op

PIPELINE_NAME = "acgan"
DEFAULT_YAML = Path(__file__).with_name("acgan.yaml")
# Concurrent training pods. The paper's 100 splits still run as 100 pods, this many at a time.
DEFAULT_PARALLELISM = 8
# Requests of the GPU tasks. Constants: KFP 2.17 compiles a resource request that is a
# pipeline parameter inside a ParallelFor without passing the parameter into the loop.
GPU_TASK_CPU, GPU_TASK_MEMORY = "4", "16G"

# Credentials reach the pods from Kubernetes secrets; every key is optional, so a cluster
# with an unauthenticated MLflow or IAM-based S3 access needs neither secret.
MLFLOW_SECRET_KEYS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
S3_SECRET_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
)


def _credentials(task: dsl.PipelineTask, mlflow_secret: Any, s3_secret: Any) -> None:
    for secret, keys in ((mlflow_secret, MLFLOW_SECRET_KEYS), (s3_secret, S3_SECRET_KEYS)):
        kubernetes.use_secret_as_env(
            task, secret_name=secret, secret_key_to_env={k: k for k in keys}, optional=True
        )


def _on_gpu_node(task: dsl.PipelineTask, node_selector: Any, tolerations: Any) -> None:
    """One GPU, on a node the selector picks; GPU nodes usually carry the NVIDIA taint, which
    is always tolerated; ``tolerations`` (a pipeline parameter) adds the cluster's own."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    kubernetes.add_toleration_json(task, tolerations)


def _resources(task: dsl.PipelineTask, cpu: Any, memory: Any) -> dsl.PipelineTask:
    return task.set_cpu_request(cpu).set_memory_request(memory).set_caching_options(True)


DESCRIPTION = (
    "Class-split AC-GAN ensemble (Odena et al. 2017): ingest, split the classes, "
    "train one AC-GAN per split on its own GPU pod, monitor collapse, evaluate, "
    "register the ensemble in MLflow when the gate passes."
)
SIGNATURE = inspect.Signature(
    [
        inspect.Parameter(
            p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default, annotation=p.type
        )
        for p in PARAMETERS
    ],
    return_annotation=None,
)
DOC = f"{DESCRIPTION}\n\nArgs:\n" + "".join(f"    {p.name}: {p.help}\n" for p in PARAMETERS)


def build_pipeline(parallelism: int = DEFAULT_PARALLELISM) -> Callable[..., Any]:
    """The pipeline function, with ``parallelism`` training pods at a time (0: unbounded)."""
    if parallelism < 0:
        raise ValueError(f"parallelism: {parallelism} is negative; use 0 (unbounded) or more")

    def acgan(*args: Any, **kwargs: Any) -> None:
        p = SIGNATURE.bind(*args, **kwargs).arguments  # KFP passes every parameter

        def steps_task(task: dsl.PipelineTask, name: str) -> None:
            _resources(task, "1", "4G").set_display_name(name)
            _credentials(task, p["mlflow_secret"], p["s3_secret"])

        def gpu_task(task: dsl.PipelineTask, name: str) -> None:
            _resources(task, GPU_TASK_CPU, GPU_TASK_MEMORY).set_display_name(name)
            task.set_memory_limit(GPU_TASK_MEMORY)
            _credentials(task, p["mlflow_secret"], p["s3_secret"])
            _on_gpu_node(task, p["gpu_node_selector"], p["gpu_tolerations"])

        ingest = ingest_op(**{name: p[name] for name in CONFIG_PARAMETERS})
        steps_task(ingest, "ingest")
        # Tells the ingest task it runs in a cluster pod (where a local MLflow store is an
        # error); a platform setting, so kfp.local does not set it.
        kubernetes.use_field_path_as_env(
            ingest, env_name="ACGAN_POD_NAME", field_path="metadata.name"
        )
        kubernetes.mount_pvc(ingest, pvc_name=p["volume_pvc"], mount_path=VOLUME_MOUNT)
        config, parent = ingest.outputs["config"], ingest.outputs["parent_run_id"]

        split = split_op(config=config, parent_run_id=parent, data=ingest.outputs["data"])
        steps_task(split, "split classes")

        # The judge classifier only needs the real data: it trains while the splits do.
        judge = judge_op(config=config, parent_run_id=parent, data=ingest.outputs["data"])
        gpu_task(judge, "train judge")

        with dsl.ParallelFor(
            split.outputs["Output"], parallelism=parallelism, name="splits"
        ) as item:
            train = train_op(
                split_id=item.split_id,
                parent_run_id=item.parent_run_id,
                config=item.config,
                checkpoint_root=p["checkpoint_root"],
                splits=split.outputs["splits"],
            )
            gpu_task(train, "train split")
            # A preempted or crashed pod comes back and resumes from its last checkpoint on
            # the volume (the trainer checkpoints every train.checkpoint_every steps).
            train.set_retry(num_retries=3, backoff_duration="60s", backoff_factor=2)
            kubernetes.mount_pvc(train, pvc_name=p["volume_pvc"], mount_path=VOLUME_MOUNT)

        monitor = monitor_op(
            config=config,
            parent_run_id=parent,
            splits=split.outputs["splits"],
            models=dsl.Collected(train.outputs["model"]),
        )
        # Reads the trainers' histories (a collapsed split was retrained in its train task).
        steps_task(monitor, "collapse monitor")

        evaluate = evaluate_op(
            config=config,
            parent_run_id=parent,
            data=ingest.outputs["data"],
            splits=split.outputs["splits"],
            ensemble=monitor.outputs["ensemble"],
            judge=judge.outputs["judge"],
        )
        gpu_task(evaluate, "evaluate ensemble")

        # The gate is evaluate's single return value: kfp.local resolves a condition on a
        # task's `Output`, not on a named output of a NamedTuple.
        with dsl.If(evaluate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
            register = register_op(
                config=config,
                parent_run_id=parent,
                data=ingest.outputs["data"],
                ensemble=monitor.outputs["ensemble"],
                monitor_report=monitor.outputs["monitor_dir"],
                eval_report=evaluate.outputs["eval_dir"],
            )
            steps_task(register, "register ensemble")
            # Registering twice is harmless, but a cached skip would hide a lost version.
            register.set_caching_options(False)

    # What KFP reads (before it wraps the function): the parameters from the table, and each
    # one's help as its description (the docstring's "Args:").
    acgan.__signature__ = SIGNATURE  # type: ignore[attr-defined]
    acgan.__doc__ = DOC
    return dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)(acgan)


acgan_pipeline = build_pipeline()


def compile_pipeline(
    out: str | Path = DEFAULT_YAML, parallelism: int = DEFAULT_PARALLELISM
) -> Path:
    """Write the compiled pipeline (KFP IR YAML) to ``out``; return its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(parallelism), str(out))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.acgan --local``: the whole DAG on this machine (kfp.local).
    Without ``--local`` it is an alias of ``acgan compile`` (same options), the one way to
    compile the pipeline."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--local" not in args:
        from acgan.cli import main as acgan

        acgan(["compile", *args])
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.acgan",
        description="Run the Kubeflow pipeline on this machine with kfp.local "
        "(without --local: `acgan compile`).",
        epilog="example:\n"
        "  python -m pipelines.acgan --local --param steps=50 --param overrides="
        "'[\"data.synthetic_per_class=40\"]'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--local", action="store_true", required=True, help="run the DAG here")
    parser.add_argument(
        "--parallelism",
        type=int,
        default=DEFAULT_PARALLELISM,
        help="training tasks at a time (default: %(default)s)",
    )
    parser.add_argument(
        "--root",
        default="kfp_outputs",
        help="where task outputs, checkpoints and mlflow.db go (default: %(default)s)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pipeline parameter (repeatable; `acgan submit --help` lists them)",
    )
    args_ns = parser.parse_args(args)
    from acgan.errors import AcganError
    from pipelines.local import run_local
    from pipelines.submit import parse_params

    try:
        result = run_local(Path(args_ns.root), parse_params(args_ns.param), args_ns.parallelism)
    except AcganError as exc:
        print(f"acgan: error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
