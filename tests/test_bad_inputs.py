"""The bad-input campaign as tests: every command, fed what a new user or an unlucky operator
would feed it, answers with exit status 2 and exactly one stderr line naming the input — and
leaves every file as it was (no half-written output, checkpoint or registry version).

The commands run in this process through the real CLI (`acgan.cli._run`: click parsing, the
one-line error, the exit status) inside click's CliRunner isolation, in a fresh copy of a
small trained project per case: a subprocess per case would spend ~10 s importing torch.
The second half holds the odd-but-valid inputs the campaign found mishandled: they now work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import SMALL_OVERRIDES, TINY_TRAIN, TinyPipeline
from PIL import Image
from services import free_port

from acgan.config import load
from acgan.evaluation.gate import gate_decision
from acgan.io import atomic_dir
from acgan.models.ensemble import GENERATOR_FILE
from acgan.monitor.detector import metric_key

# --- running the CLI in this process -----------------------------------------------------------

_BAR = re.compile(r"\d+%\|")  # a tqdm progress bar (stderr, but not an error line)


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        """stderr without progress bars: what a user reads as messages."""
        segments = (s for line in self.err.splitlines() for s in line.split("\r"))
        return [s for s in segments if s.strip() and not _BAR.search(s)]


def acgan(*args: str) -> Outcome:
    """``acgan ARGS`` as the console script runs it, here, in the current directory."""
    from acgan.cli import _run

    start = time.monotonic()
    with CliRunner().isolation() as (out, err, _):
        try:
            _run(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return Outcome(code, out.getvalue().decode(), err.getvalue().decode(), time.monotonic() - start)


def params_yaml(*overrides: str) -> str:
    raw: dict[str, dict[str, object]] = {}
    for text in overrides:
        key, _, value = text.partition("=")
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = yaml.safe_load(value)
    return yaml.safe_dump(raw)


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``root``, hidden temp files included, with what any write changes
    (an atomic replace: the inode; a write in place: size and mtime)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()  # a directory's own times change when a temp entry comes and goes
        out[str(p.relative_to(root))] = (
            (0, 0, 0) if p.is_dir() else (st.st_ino, st.st_size, st.st_mtime_ns)
        )
    return out


# --- the project every case starts from ------------------------------------------------------


@pytest.fixture(scope="module")
def project(tiny_trained: TinyPipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `dvc repro`-shaped directory: params.yaml (tracking off), data, splits, both splits
    trained (with their checkpoints), the monitor's report and ensemble manifest, the judge."""
    root = tmp_path_factory.mktemp("bad-inputs") / "project"
    shutil.copytree(tiny_trained.ingested, root / "data" / "ingested")
    shutil.copytree(tiny_trained.splits, root / "data" / "splits")
    for d in tiny_trained.model_dirs:
        shutil.copytree(d, root / "models" / d.name)
    shutil.copytree(tiny_trained.checkpoints, root / "checkpoints", copy_function=os.link)
    (root / "params.yaml").write_text(params_yaml(*SMALL_OVERRIDES, *TINY_TRAIN))
    (root / "afile").write_text("a file, not a directory\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for cmd in (("monitor",), ("judge",)):
            res = acgan(*cmd)
            assert res.code == 0, res.err[-2000:]
    return root


@pytest.fixture
def case(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    here = tmp_path / "project"
    # Hard links: a fresh tree per case for free (256 MB of checkpoints). The CLI replaces
    # files atomically (a new inode), and the set-ups below never write into a linked file.
    shutil.copytree(project, here, symlinks=True, copy_function=os.link)
    monkeypatch.chdir(here)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield here


# --- what the cases set up ---------------------------------------------------------------------

Setup = Callable[[Path], None]


def replace(p: Path, data: bytes) -> None:
    """Write ``p`` as a new file (never into the inode the project shares with every case)."""
    p.parent.mkdir(parents=True, exist_ok=True)
    p.unlink(missing_ok=True)
    p.write_bytes(data)


def write(rel: str, data: str | bytes) -> Setup:
    return lambda root: replace(root / rel, data.encode() if isinstance(data, str) else data)


def flip(rel: str) -> Setup:
    """Corrupt 4 KB in the middle of a file (a bad disk, a bad copy)."""

    def _do(root: Path) -> None:
        p = root / rel
        data = bytearray(p.read_bytes())
        mid = len(data) // 2
        data[mid : mid + 4096] = bytes(b ^ 0xFF for b in data[mid : mid + 4096])
        replace(p, bytes(data))

    return _do


def truncate(rel: str, keep: int = 200) -> Setup:
    def _do(root: Path) -> None:
        p = root / rel
        replace(p, p.read_bytes()[:keep])

    return _do


def edit_json(rel: str, change: Callable[[dict], None]) -> Setup:
    def _do(root: Path) -> None:
        p = root / rel
        obj = json.loads(p.read_text())
        change(obj)
        replace(p, json.dumps(obj).encode())

    return _do


def both(*setups: Setup) -> Setup:
    def _do(root: Path) -> None:
        for s in setups:
            s(root)

    return _do


def png(size: tuple[int, int] = (40, 40), mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    img = img if mode == "RGB" else img.convert(mode)
    import io

    buf = io.BytesIO()
    img.save(buf, format="TIFF" if mode == "LAB" else "PNG")
    return buf.getvalue()


def folder(**classes: list[bytes]) -> Setup:
    """An ImageFolder tree under raw/: ``folder(a=[png(), ...], b=[])``."""

    def _do(root: Path) -> None:
        for name, images in classes.items():
            d = root / "raw" / name
            d.mkdir(parents=True, exist_ok=True)
            for i, data in enumerate(images):
                (d / f"{i}.png").write_bytes(data)

    return _do


IMAGEFOLDER = ("--set", "data.source=imagefolder", "--set", "data.root=raw")
ENSEMBLE = ("--model", "reports/monitor/ensemble.json")
G0 = f"models/split_0/{GENERATOR_FILE}"
G1 = f"models/split_1/{GENERATOR_FILE}"
DEAD = f"http://user:secret@127.0.0.1:{free_port()}"  # nothing listens there
DEAD_SET = ("--set", "tracking.enabled=true", "--set", f"tracking.uri={DEAD}")
QUICK = ("--set", "tracking.deadline_s=2")


def no_hash(rel: str) -> Setup:
    """An output written before generator SHA-256s were recorded."""
    return edit_json(rel, lambda o: o.pop("generator_sha256", None))


def bad_manifest_hash(obj: dict) -> None:
    obj["members"][0]["sha256"] = "0" * 64


C = pytest.param
CASES = [
    # --- configuration (any command) ---
    C(("config", "--set", "train.lr=nan"), None, "train.lr", id="lr-nan"),
    C(("config", "--set", "eval.max_fid=inf"), None, "eval.max_fid", id="max-fid-inf"),
    C(("config", "--set", "monitor.margin=.NaN"), None, "monitor.margin", id="margin-nan"),
    C(("config", "--set", "train.steps=0"), None, "train.steps", id="steps-0"),
    C(("config", "--set", "train.stepz=5"), None, "train.stepz", id="unknown-key"),
    C(("config", "--set", "steps=5"), None, "steps=5", id="override-no-section"),
    C(("config", "--set", "train.lr=[1"), None, "train.lr=[1", id="override-bad-yaml"),
    C(("config", "--set", "tracking.deadline_s=0"), None, "tracking.deadline_s", id="deadline-0"),
    C(("config", "--set", "registry.model_name=it's"), None, "model_name", id="model-quote"),
    C(("config", "--params", "nope.yaml"), None, "nope.yaml", id="params-missing"),
    C(("config", "--params", "data"), None, "data", id="params-is-dir"),
    C(
        ("config",),
        write("params.yaml", "train:\n  steps: [5\n"),
        "params.yaml:3:1",
        id="yaml-syntax",
    ),
    C(
        ("config",),
        write("params.yaml", "train:\n  steps: 5\n  steps: 6\n"),
        "params.yaml:3",
        id="yaml-duplicate-key",
    ),
    C(
        ("config",),
        write("params.yaml", b"train:\n  steps: 5 \xff\n"),
        "params.yaml",
        id="not-utf8",
    ),
    C(("config",), write("params.yaml", "- train\n"), "params.yaml", id="params-is-a-list"),
    # --- ingest ---
    C(("ingest", *IMAGEFOLDER[:2], "--set", "data.root=raw"), None, "data.root", id="root-missing"),
    C(
        ("ingest", *IMAGEFOLDER),
        folder(a=[png(seed=i) for i in range(3)], b=[png(), b"not an image"]),
        "raw/b/1.png",
        id="corrupt-image",
    ),
    C(
        ("ingest", *IMAGEFOLDER, "--set", "data.max_image_pixels=10000"),
        folder(a=[png(), png((200, 200))], b=[png()]),
        "data.max_image_pixels",
        id="image-too-large",
    ),
    C(("ingest", *IMAGEFOLDER), folder(a=[png()], b=[]), "raw/b", id="empty-class"),
    C(("ingest", *IMAGEFOLDER), folder(**{".git": [png()]}), "raw", id="only-hidden-dirs"),
    C(("ingest", *IMAGEFOLDER), write("raw", "x"), "data.root", id="root-is-a-file"),
    C(("ingest", "--set", "data.classes=[nope]"), None, "nope", id="unknown-class"),
    C(("ingest", "--out", "afile/x"), None, "afile/x", id="out-inside-a-file"),
    C(("ingest", "--out", "afile"), None, "afile", id="out-is-a-file"),
    # --- split ---
    C(("split", "--data", "nowhere"), None, "nowhere", id="split-no-data"),
    C(("split", "--set", "split.classes=[[0,1],[1,2]]"), None, "split.classes[1]", id="overlap"),
    # --- train ---
    C(("train", "--split", "9"), None, "split 9", id="unknown-split"),
    C(("train",), None, "--split", id="no-split"),
    C(("train", "--split", "-1"), None, "--split", id="negative-split"),
    C(("train", "--split", "0", "--set", "train.lr=nan"), None, "train.lr", id="train-lr-nan"),
    C(("train", "--split", "0", "--splits", "nowhere"), None, "nowhere", id="no-splits"),
    C(("train", "--split", "0", "--split", "1", "--out", "x"), None, "--out", id="out-two-splits"),
    C(
        ("train", "--split", "0"),
        lambda root: truncate(str(max((root / "checkpoints/split_0").rglob("step-*.pt"))))(root),
        "step-00000006.pt",
        id="truncated-checkpoint",
    ),
    # --- monitor ---
    C(("monitor", "--models", "nowhere"), None, "nowhere", id="monitor-no-models"),
    C(("monitor", "--models", "afile"), None, "afile", id="monitor-models-file"),
    C(("monitor",), flip(G0), "split 0", id="monitor-flipped-generator"),
    C(
        ("monitor",),
        both(no_hash("models/split_0/train.json"), truncate(G0)),
        "models/split_0",
        id="monitor-truncated-generator",
    ),
    C(("monitor",), write("models/split_1/history.json", "{"), "history.json", id="bad-history"),
    C(("monitor", "--set", "monitor.threshold=nan"), None, "monitor.threshold", id="thr-nan"),
    # --- evaluate ---
    C(("evaluate", "--ensemble", "nowhere.json"), None, "nowhere.json", id="eval-no-manifest"),
    C(("evaluate", "--judge", "nowhere"), None, "nowhere", id="eval-no-judge"),
    C(("evaluate",), flip(G1), "split 1", id="eval-flipped-generator"),
    C(
        ("evaluate",),
        edit_json("reports/monitor/ensemble.json", bad_manifest_hash),
        "split 0",
        id="eval-manifest-hash",
    ),
    C(("evaluate", "--set", "eval.min_accuracy=nan"), None, "eval.min_accuracy", id="gate-nan"),
    C(("evaluate",), write("reports/monitor/ensemble.json", "[}"), "ensemble.json", id="bad-json"),
    # --- register ---
    C(("register", "--ensemble", "nowhere.json"), None, "nowhere.json", id="reg-no-manifest"),
    C(("register",), flip(G0), "split 0", id="reg-flipped-generator"),
    C(("register",), write("reports/eval/gate.json", '{"pass": 1}'), "gate.json", id="bad-gate"),
    C(("register", *DEAD_SET, *QUICK), None, "http://***@127.0.0.1", id="reg-dead-server"),
    # --- generate ---
    C(
        ("generate", *ENSEMBLE, "--classes", "circle", "--out", "g"),
        write("g/circle/keep.txt", "mine"),
        "g/circle",
        id="gen-class-folder-has-files",
    ),
    C(("generate", *ENSEMBLE, "--grid", "afile/grid.png"), None, "--grid", id="gen-grid-in-file"),
    C(("generate", *ENSEMBLE, "--grid", "data"), None, "--grid", id="gen-grid-is-dir"),
    C(("generate", *ENSEMBLE, "--out", "afile"), None, "afile", id="gen-out-is-file"),
    C(("generate", *ENSEMBLE, "--classes", "nope"), None, "nope", id="gen-unknown-class"),
    C(("generate", *ENSEMBLE, "--classes", "99"), None, "99", id="gen-class-index"),
    C(("generate", "--model", "nowhere"), None, "nowhere", id="gen-unknown-model"),
    C(("generate", *ENSEMBLE, "--n", "0"), None, "--n", id="gen-n-0"),
    C(("generate", *ENSEMBLE), flip(G0), "split 0", id="gen-flipped-generator"),
    C(
        ("generate", "--model", "models:/acgan-synthetic@champion", *DEAD_SET, *QUICK),
        None,
        "models:/acgan-synthetic@champion",
        id="gen-dead-server",
    ),
]


@pytest.mark.parametrize(("args", "setup", "needle"), CASES)
def test_bad_input_is_one_line_and_changes_nothing(
    case: Path, args: tuple[str, ...], setup: Setup | None, needle: str
) -> None:
    if "train.device=cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    if setup is not None:
        setup(case)
    before = tree(case)
    res = acgan(*args)
    assert res.code == 2, (res.out, res.err)
    assert "Traceback" not in res.err
    assert len(res.lines) == 1, res.lines  # exactly one line, and it names the input
    assert res.lines[0].startswith("acgan: error: ") and needle in res.lines[0], res.lines[0]
    assert "secret" not in res.err + res.out
    assert "fall back to an older one" not in res.lines[0] or "step-" in needle
    assert tree(case) == before  # nothing written, replaced, deleted or left half-done
    if "tracking.deadline_s=2" in args:
        assert res.seconds < 2 + 3, f"a dead server took {res.seconds:.1f} s (deadline 2 s)"


def test_the_campaign_covers_every_command() -> None:
    commands = {p.values[0][0] for p in CASES}
    assert {"config", "ingest", "train", "monitor", "evaluate", "register", "generate"} <= commands
    assert len(CASES) >= 40


# --- odd but valid inputs: they work -----------------------------------------------------------

# `$x^$` is what crashed matplotlib's mathtext (a pair of `$` starts math mode)
ODD_NAMES = ["men's shoes", "men_s shoes", 'say "hi"', "back`tick", "price $x^$", "猫", "café"]


def test_odd_class_names_train_resume_log_and_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quotes, backticks, `$`, spaces and non-ASCII in class names: ingest, split, train with
    MLflow (twice: the resumed trainer finds its run again), monitor (plots with `$`), each
    class its own MLflow metric key."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder(**{n: [png(seed=i + 10 * k) for i in range(4)] for k, n in enumerate(ODD_NAMES)})(
        tmp_path
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Path("params.yaml").write_text(
        params_yaml(
            "data.source=imagefolder",
            "data.root=raw",
            "data.shard_rows=64",
            f"split.classes_per_split={len(ODD_NAMES)}",
            "split.ids=[0]",
            "split.reference_pairs=2",
            "train.steps=2",
            "train.batch_size=4",
            "train.log_every=1",
            "train.sample_every=2",
            "train.checkpoint_every=1",
            "monitor.every=2",
            "monitor.pairs=2",
            "tracking.enabled=true",
            f"tracking.uri={uri}",
        )
    )
    for cmd in (("ingest",), ("split",), ("train", "--split", "0")):
        res = acgan(*cmd)
        assert res.code == 0, res.err[-3000:]
    first = json.loads(Path("models/split_0/train.json").read_text())["run_id"]
    res = acgan("train", "--split", "0")  # as after a crash: the same run, found by its hash
    assert res.code == 0, res.err[-3000:]
    assert json.loads(Path("models/split_0/train.json").read_text())["run_id"] == first
    res = acgan("monitor")
    assert res.code == 0, res.err[-3000:]
    assert Path("reports/monitor/plots/split_0.png").stat().st_size > 0

    client = MlflowClient(uri)
    keys = [k for k in client.get_run(first).data.metrics if k.startswith("msssim/")]
    assert len(set(keys) - {"msssim/threshold"}) == len(ODD_NAMES)
    monitor_run = json.loads(Path("reports/monitor/config.json").read_text())
    assert monitor_run["stage"] == "monitor"


def test_evaluation_plots_take_dollar_signs() -> None:
    from acgan.evaluation.report import _accuracy_plot, _msssim_plot

    table = [
        {"class": n, "judge_accuracy": 0.5, "real_judge_accuracy": 0.6, "msssim": 0.2,
         "msssim_real": 0.3}
        for n in ODD_NAMES
    ]  # fmt: skip
    assert _accuracy_plot(table).ndim == 3 and _msssim_plot(table, 0.3).ndim == 3


def test_image_folder_oddities_are_said(case: Path) -> None:
    """A LAB image ingests as grayscale; a hidden folder and a skipped file are reported."""
    folder(a=[png(mode="LAB"), png(seed=1)], b=[png(seed=2), b"garbage"])(case)
    (case / "raw" / ".thumbs").mkdir()
    res = acgan(
        "ingest", *IMAGEFOLDER, "--set", "data.channels=1", "--set", "data.on_bad_image=skip"
    )
    assert res.code == 0, res.err[-2000:]
    assert "skipped 1 unreadable image(s): b/1.png" in res.out
    assert "ignored hidden folder(s) .thumbs" in res.out
    manifest = json.loads((case / "data/ingested/manifest.json").read_text())
    assert manifest["counts"] == {"a": 2, "b": 1} and manifest["ignored_dirs"] == [".thumbs"]
    assert manifest["mode"] == "L"


def test_generate_overwrite_replaces_only_its_own_files(case: Path) -> None:
    (case / "g" / "circle").mkdir(parents=True)
    (case / "g" / "circle" / "keep.txt").write_text("mine")
    (case / "g" / "circle" / "0000.png").write_text("an old sample")
    res = acgan(
        "generate", *ENSEMBLE, "--classes", "circle", "--n", "2", "--out", "g", "--overwrite"
    )
    assert res.code == 0, res.err[-2000:]
    assert (case / "g" / "circle" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in (case / "g" / "circle").iterdir()) == [
        "0000.png",
        "0001.png",
        "keep.txt",
    ]
    assert Image.open(case / "g" / "circle" / "0000.png").size == (32, 32)


def test_stale_temp_dirs_of_dead_writers_are_removed(tmp_path: Path) -> None:
    """What a killed stage leaves beside its output goes with the next write of it; a live
    writer's temp directory stays."""
    import os
    import subprocess

    from acgan import io as acgan_io

    gone = subprocess.Popen(["true"])
    gone.wait()
    host = acgan_io._HOST
    dead = tmp_path / f".out.tmp-{gone.pid}.{host}-abc"
    aside = tmp_path / f".out.old-{gone.pid}.{host}-abc"
    live = tmp_path / f".out.tmp-{os.getppid()}.{host}-abc"
    for d in (dead, aside, live):
        d.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "out"])


def test_gate_fails_on_a_nan_threshold_or_figure() -> None:
    """NaN compares false both ways: a NaN limit or figure fails the gate, naming it."""
    import dataclasses

    e = dataclasses.replace(load(None).eval, min_accuracy=0.5)
    nan = float("nan")
    good = {"judge_skill": 1.0, "fid_ratio": 1.0, "diverse_fraction": 1.0, "judge_accuracy": 0.99}
    assert gate_decision(good, e)["passed"]
    gate = gate_decision(good, dataclasses.replace(e, min_accuracy=nan))
    assert not gate["passed"] and len(gate["reasons"]) == 1
    assert "eval.min_accuracy" in gate["reasons"][0]
    gate = gate_decision({**good, "judge_accuracy": nan}, e)
    assert not gate["passed"] and len(gate["reasons"]) == 1
    assert "judge_accuracy" in gate["reasons"][0]


def test_metric_keys_stay_apart() -> None:
    keys = [metric_key(n, i) for i, n in enumerate([*ODD_NAMES, "_", "", "..", "a$b", "a_b"])]
    assert len(set(keys)) == len(keys)
    assert metric_key("circle", 0) == "circle" and metric_key("猫", 5) == "猫"


def test_credentials_are_masked_wherever_a_uri_is_shown(case: Path) -> None:
    uri = "https://alice:s3cret@mlflow.example.com/"
    cfg = load(None, [f"tracking.uri={uri}"])
    assert cfg.tracking.uri == uri  # what the client connects with
    assert "s3cret" not in json.dumps(cfg.record()) + json.dumps(cfg.flat())
    res = acgan("config", "--set", f"tracking.uri={uri}")
    assert res.code == 0 and "https://***@mlflow.example.com/" in res.out
    assert "s3cret" not in res.out
