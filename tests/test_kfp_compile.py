"""The compiled Kubeflow pipeline: in sync with the code, the DAG the issue asks for, the
platform settings, and `acgan submit`'s offline checks (nothing reaches a server on bad input).
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

from acgan import kfp_runtime as rt  # noqa: E402
from acgan.cli import main  # noqa: E402
from acgan.errors import ConfigError  # noqa: E402
from components.images import STEP_IMAGE, TRAINER_IMAGE  # noqa: E402
from pipelines import acgan as pipeline  # noqa: E402
from pipelines import submit as sub  # noqa: E402

GPU_TASKS = ("train", "judge", "evaluate")  # the monitor only reads histories


def _docs(path: Path) -> list[Any]:
    """The YAML documents of a compiled pipeline, minus the SDK version stamp."""
    docs = list(yaml.safe_load_all(path.read_text()))
    docs[0].pop("sdkVersion", None)
    return docs


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    path = pipeline.compile_pipeline(tmp_path_factory.mktemp("kfp") / "acgan.yaml")
    spec, platform = _docs(path)
    return spec, platform


def test_committed_yaml_is_in_sync(compiled: tuple[dict[str, Any], dict[str, Any]]) -> None:
    committed = _docs(pipeline.DEFAULT_YAML)
    assert committed == list(compiled), (
        "pipelines/acgan.yaml is stale: run `acgan compile` and commit it"
    )


def test_dag_shape(compiled: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    assert set(root) >= {"ingest", "split", "judge", "monitor", "evaluate"}
    loop = root["for-loop-1"]
    assert loop["iteratorPolicy"]["parallelismLimit"] == pipeline.DEFAULT_PARALLELISM
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("split-Output")
    # monitor gets every split's model (dsl.Collected); evaluate the packed ensemble
    models = root["monitor"]["inputs"]["artifacts"]["models"]["taskOutputArtifact"]
    assert models == {
        "outputArtifactKey": "pipelinechannel--train-model",
        "producerTask": "for-loop-1",
    }
    ens = root["evaluate"]["inputs"]["artifacts"]["ensemble"]["taskOutputArtifact"]
    assert ens["producerTask"] == "monitor"
    # register only when the gate passed
    cond = root["condition-2"]
    assert "evaluate-Output'] == true" in cond["triggerPolicy"]["condition"]
    assert "register" in spec["components"]["comp-condition-2"]["dag"]["tasks"]
    # the parent run id is created once (ingest) and handed to every later task
    for task in ("split", "judge", "monitor", "evaluate"):
        given = root[task]["inputs"]["parameters"]["parent_run_id"]["taskOutputParameter"]
        assert given == {"outputParameterKey": "parent_run_id", "producerTask": "ingest"}


def test_training_task_settings(compiled: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, platform = compiled
    body = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["train"]
    assert body["retryPolicy"]["maxRetryCount"] == 3
    assert body["cachingOptions"]["enableCache"] is True
    assert body["inputs"]["parameters"]["split_id"]["parameterExpressionSelector"] == (
        'parseJson(string_value)["split_id"]'
    )
    res = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert res["accelerator"]["resourceCount"] == "1"
    assert res["resourceCpuRequest"] == pipeline.GPU_TASK_CPU
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert k8s["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith(
        "gpu_node_selector"
    )
    assert {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"} in k8s[
        "tolerations"
    ]
    secrets = {s["secretNameParameter"]["componentInputParameter"] for s in k8s["secretAsEnv"]}
    assert secrets == {"pipelinechannel--mlflow_secret", "pipelinechannel--s3_secret"}
    envs = {e["envVar"] for s in k8s["secretAsEnv"] for e in s["keyToEnv"]}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"} <= envs
    assert all(s["optional"] for s in k8s["secretAsEnv"])
    assert k8s["pvcMount"][0]["mountPath"] == pipeline.VOLUME_MOUNT
    ingest = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-ingest"]
    assert ingest["fieldPathAsEnv"] == [{"fieldPath": "metadata.name", "name": "ACGAN_POD_NAME"}]


def test_images_and_no_runtime_install(compiled: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = compiled
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        task = name.removeprefix("exec-")
        assert container["image"] == (TRAINER_IMAGE if task in GPU_TASKS else STEP_IMAGE)
        script = " ".join(container["command"])
        assert "pip install" not in script  # the images already hold acgan and kfp


def test_pipeline_parameters_come_from_the_table(compiled: tuple[dict[str, Any], Any]) -> None:
    spec = compiled[0]
    params = spec["root"]["inputDefinitions"]["parameters"]
    kinds = {str: "STRING", int: "NUMBER_INTEGER", list: "LIST", dict: "STRUCT"}
    assert list(params) == sorted(p.name for p in rt.PARAMETERS)
    for p in rt.PARAMETERS:
        assert params[p.name]["parameterType"] == kinds[p.type], p.name
        assert params[p.name]["defaultValue"] == p.default, p.name
        assert params[p.name]["description"] == p.help, p.name
    # as users know them
    assert params["steps"]["defaultValue"] == 400
    assert params["source"]["defaultValue"] == "synthetic"
    knobs = set(rt.config_keys()) | {"overrides", "checkpoint_root", "gpu_node_selector"}
    assert knobs <= set(params)
    # the ingest task takes the configuration parameters, by the same names
    ingest = spec["components"]["comp-ingest"]["inputDefinitions"]["parameters"]
    assert set(ingest) == set(rt.CONFIG_PARAMETERS)
    passed = spec["root"]["dag"]["tasks"]["ingest"]["inputs"]["parameters"]
    assert {n: v["componentInputParameter"] for n, v in passed.items()} == {
        n: n for n in rt.CONFIG_PARAMETERS
    }


def test_submit_help_lists_the_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    main(["submit", "--help"])
    lines = capsys.readouterr().out.splitlines()
    for p in rt.PARAMETERS:
        assert any(line.split()[:2] == [p.name, p.type.__name__] for line in lines if line), p.name


def test_parallelism_is_fixed_at_compile_time(tmp_path: Path) -> None:
    spec, _ = _docs(pipeline.compile_pipeline(tmp_path / "p.yaml", parallelism=3))
    assert spec["root"]["dag"]["tasks"]["for-loop-1"]["iteratorPolicy"] == {"parallelismLimit": 3}
    with pytest.raises(ValueError, match="negative"):
        pipeline.build_pipeline(-1)


def test_build_config_maps_each_knob() -> None:
    cfg = rt.build_config(
        {
            "source": "cifar10",
            "data_root": "/data",
            "resolution": 64,
            "classes_per_split": 2,
            "steps": 7,
            "batch_size": 8,
            "seed": 3,
            "tracking_uri": "",
            "experiment": "e",
            "model_name": "",
            "overrides": ["train.steps=9", "monitor.pairs=4"],
        },
        {"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
    )
    assert (cfg.data.source, cfg.data.root, cfg.data.resolution) == ("cifar10", "/data", 64)
    assert (cfg.split.classes_per_split, cfg.train.batch_size, cfg.train.seed) == (2, 8, 3)
    assert cfg.train.steps == 9  # overrides come last
    assert cfg.monitor.pairs == 4
    assert cfg.tracking.uri == "http://mlflow:5000"  # empty parameter: the secret's URI
    assert cfg.model_name == "acgan-cifar10"
    with pytest.raises(ConfigError, match="data.resolution"):
        rt.build_config({"resolution": 48}, {})
    # in a cluster pod a local MLflow store would vanish with the pod: refused
    pod = {"ACGAN_POD_NAME": "acgan-ingest-x"}
    with pytest.raises(ConfigError, match="tracking.uri: sqlite:///mlflow.db is local to this pod"):
        rt.build_config({"tracking_uri": ""}, pod)
    assert rt.build_config({"tracking_uri": "http://mlflow:5000"}, pod).tracking.uri


# --- acgan submit: everything is checked before the server is contacted ---


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A loopback HTTP endpoint that records every request and answers 404 (no KFP here)."""

    seen: list[str] = []

    def _any(self) -> None:
        type(self).seen.append(f"{self.command} {self.path}")
        self.send_response(404)
        self.end_headers()

    do_GET = do_POST = _any

    def log_message(self, *args: Any) -> None: ...


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[str]]]:
    _Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("stepz=100", "--param stepz: the pipeline has no such parameter (known: batch_size"),
        ("steps=1.5", "--param steps=1.5: expected an integer"),
        ("steps=many", "--param steps=many: expected an integer"),
        ("overrides=train.lr=0.1", "--param overrides=train.lr=0.1: expected a JSON list"),
        ("gpu_node_selector=[1]", "--param gpu_node_selector=[1]: expected a JSON object"),
        ("classes_per_split=11", "--param classes_per_split: 11 is larger than the 10 classes"),
        ("resolution=48", "--param resolution: data.resolution: must be one of 32 | 64 | 128"),
        ('overrides=["train.lr=5"]', "--param overrides: train.lr: must be <= 1.0"),
        ('overrides=["nope.x=1"]', "--param overrides: override 'nope.x=1': unknown section"),
        ("steps", "--param 'steps': expected NAME=VALUE"),
    ],
)
def test_submit_rejects_bad_parameters_offline(
    endpoint: tuple[str, list[str]],
    capsys: pytest.CaptureFixture[str],
    param: str,
    message: str,
) -> None:
    url, seen = endpoint
    with pytest.raises(SystemExit) as exit_:
        main(["submit", "--endpoint", url, "--param", param])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"acgan: error: {message}")
    assert "\n" not in err
    assert seen == []  # nothing was sent


def test_submit_types_and_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    typed = sub.validate(
        sub.parse_params(
            [
                "steps=50",
                "source=mnist",
                "classes_per_split=10",
                'overrides=["data.download=true"]',
                'gpu_node_selector={"pool": "a100"}',
            ]
        )
    )
    assert typed == {
        "steps": 50,
        "source": "mnist",
        "classes_per_split": 10,
        "overrides": ["data.download=true"],
        "gpu_node_selector": {"pool": "a100"},
    }
    with pytest.raises(sub.SubmitError, match="given twice"):
        sub.parse_params(["steps=1", "steps=2"])
    main(["submit", "--endpoint", "http://127.0.0.1:9", "--param", "steps=5", "--dry-run"])
    assert "nothing submitted" in capsys.readouterr().out


def test_submit_reaches_the_endpoint_only_when_valid(
    endpoint: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, seen = endpoint
    with pytest.raises(SystemExit):
        main(["submit", "--endpoint", url, "--param", "steps=5"])
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"acgan: error: --endpoint {url}: answers HTTP 404 on /apis/v2beta1")
    assert "\n" not in err
    assert seen == ["GET /apis/v2beta1/healthz"]


def test_submit_unreachable_or_malformed_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for url, message in (
        (f"http://127.0.0.1:{port}", f"--endpoint http://127.0.0.1:{port}: not reachable"),
        ("127.0.0.1:8080", "--endpoint 127.0.0.1:8080: not a URL"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["submit", "--endpoint", url, "--param", "steps=5"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"acgan: error: {message}")
        assert "\n" not in err


def test_compile_command_writes_the_committed_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "a.yaml"
    main(["compile", "--out", str(out)])
    assert _docs(out) == _docs(pipeline.DEFAULT_YAML)
