"""The registered ensemble in use: the pyfunc model and `acgan generate`, on the embedded
default store — `sqlite:///mlflow.db` in the working directory, what `dvc repro` uses.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TinyPipeline
from PIL import Image

from acgan.errors import AcganError
from acgan.models.ensemble import GENERATOR_FILE, write_manifest

MODEL = "models:/acgan-synthetic@champion"  # the default name: acgan-<data.source>


@dataclass(frozen=True)
class Project:
    root: Path
    store: str  # the project's sqlite:///…/mlflow.db, as an absolute URI
    names: list[str]  # class names by index


@pytest.fixture(scope="module")
def project(tiny_trained: TinyPipeline, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A `dvc repro`-shaped working directory registered by `acgan register` with every
    default: no params file, no MLFLOW_TRACKING_URI, no evaluation report (the gate is then
    "every split trained"), relative paths in the ensemble manifest."""
    from acgan.cli import main

    root = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        shutil.copytree(tiny_trained.ingested, "data/ingested")
        for d in tiny_trained.model_dirs:
            shutil.copytree(d, f"models/{d.name}")
        write_manifest(
            "reports/monitor",
            [{"split_id": i, "model_dir": f"models/split_{i}"} for i in range(2)],
        )
        main(["register", "--set", "registry.retries=2"])
    names = json.loads((root / "data/ingested/manifest.json").read_text())["class_names"]
    return Project(root, f"sqlite:///{root / 'mlflow.db'}", names)


def test_register_cli_uses_the_embedded_default(project: Project) -> None:
    rec = json.loads((project.root / "reports/register/registration.json").read_text())
    assert rec["model_uri"] == "models:/acgan-synthetic/1" and rec["champion"]
    assert rec["reason"] == "first version to pass the gate"
    assert rec["gate"] == {
        "passed": True,
        "reasons": [],
        "source": "all splits trained (no gate.json)",
    }
    # the figures that exist: training's, each the mean over the splits' last logged figures
    finals = [
        json.loads((project.root / f"models/split_{i}/train.json").read_text())["metrics"]
        for i in range(2)
    ]
    for key in ("d_acc_real", "loss_d", "loss_g"):
        mean = sum(f[key] for f in finals) / len(finals)
        assert rec["figures"][f"train_{key}"] == pytest.approx(mean), key
    assert (project.root / "mlflow.db").is_file()
    assert list((project.root / "mlruns").rglob(GENERATOR_FILE))  # artifacts beside the store


def test_pyfunc_routes_classes_deterministically(project: Project) -> None:
    import mlflow

    mlflow.set_tracking_uri(project.store)
    model = mlflow.pyfunc.load_model(MODEL)
    frame = pd.DataFrame({"class_label": [0, project.names[7]], "n": [3, 2], "seed": [5, 5]})
    arrays = {"format": "array"}
    out = model.predict(frame, params=arrays)
    assert out["images"].dtype == np.uint8 and out["images"].shape == (5, 32, 32, 3)
    assert out["labels"].tolist() == [0, 0, 0, 7, 7]
    again = model.predict(frame, params=arrays)["images"]
    assert np.array_equal(out["images"], again)  # same seed, same images
    other = model.predict(pd.DataFrame({"class_label": [0], "n": [3], "seed": [6]}), params=arrays)
    assert not np.array_equal(out["images"][:3], other["images"])
    no_seed = model.predict(pd.DataFrame({"class_label": [0], "n": [3]}), params=arrays)
    assert no_seed["images"].shape == (3, 32, 32, 3)
    # the default format: one base64 PNG per image, decoding to the same pixels
    rows = model.predict(frame)
    assert rows["class_label"].tolist() == [0, 0, 0, 7, 7] and rows["index"].tolist()[3:] == [0, 1]
    assert rows["class_name"].tolist()[3] == project.names[7] and set(rows["seed"]) == {5}
    pngs = [Image.open(io.BytesIO(base64.b64decode(b))) for b in rows["png_base64"]]
    assert np.array_equal(np.stack([np.asarray(p) for p in pngs]), out["images"])
    with pytest.raises(Exception, match=r"'unicorn' is not in this ensemble; valid classes: 0="):
        model.predict(pd.DataFrame({"class_label": ["unicorn"], "n": [1], "seed": [0]}))


def test_generate_cli_from_champion_writes_every_class(
    project: Project,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import mlflow

    from acgan.cli import main
    from acgan.registry.generate import generate_images

    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.store)
    out, grid, names = tmp_path / "gen", tmp_path / "grid.png", project.names
    args = f"generate --classes 3,{names[7]} --n 5 --seed 2 --out {out} --grid {grid}"
    main(args.split())
    assert "10 images of 2 classes from models:/acgan-synthetic@champion" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted([names[3], names[7]])
    files = sorted((out / names[7]).iterdir())
    assert [p.name for p in files] == [f"{i:04d}.png" for i in range(5)]
    # a row per class, each image upscaled to 64 px (2 px padding), the class names on the left
    width, height = Image.open(grid).size
    assert height == 2 * 66 + 2 and width > 5 * 66 + 2
    # exactly what the registered model's predict returns for that seed ...
    mlflow.set_tracking_uri(project.store)
    pred = mlflow.pyfunc.load_model(MODEL).predict(
        pd.DataFrame({"class_label": [7], "n": [5], "seed": [2]}), params={"format": "array"}
    )
    assert np.array_equal(np.stack([np.asarray(Image.open(p)) for p in files]), pred["images"])
    # ... and what the local training outputs give without any registry, batching or not
    monkeypatch.chdir(project.root)  # the manifest's model_dir paths are relative to it
    local = generate_images(
        "reports/monitor/ensemble.json",
        tmp_path / "local",
        classes=[7],
        n=5,
        seed=2,
        batch_size=2,
        progress=False,
    )
    assert local.counts == {names[7]: 5}
    for p in files:
        assert p.read_bytes() == (tmp_path / "local" / names[7] / p.name).read_bytes()


def test_tampered_generator_is_reported_by_split(
    project: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    from acgan.cli import main

    mlflow.set_tracking_uri(project.store)
    model_dir = Path(mlflow.artifacts.download_artifacts(MODEL, dst_path=str(tmp_path)))
    members = json.loads((model_dir / "artifacts" / "members.json").read_text())
    victim = sorted(model_dir.rglob(GENERATOR_FILE))[-1]
    blob = victim.read_bytes()
    victim.write_bytes(blob[: len(blob) // 2])  # truncated
    sid = next(m["split_id"] for m in members if m["sha256"] == hashlib.sha256(blob).hexdigest())
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--model", str(model_dir), "--out", str(tmp_path / "g")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's download bar
    assert err.startswith(f"acgan: error: split {sid}: generator file {GENERATOR_FILE}")
    assert "tampered or truncated" in err
    assert not (tmp_path / "g").exists()  # nothing generated from a bad model


def test_generate_bad_input_fails_in_one_line(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from acgan.registry.generate import generate_images

    monkeypatch.chdir(project.root)
    manifest = "reports/monitor/ensemble.json"
    with pytest.raises(AcganError, match=r"--model nowhere: not a model URI"):
        generate_images("nowhere", tmp_path / "g")
    with pytest.raises(AcganError, match=r"class_label 'unicorn' is not in this ensemble"):
        generate_images(manifest, tmp_path / "g", classes=["unicorn"])
    with pytest.raises(AcganError, match=r"--n 0: ask for at least 1"):
        generate_images(manifest, tmp_path / "g", n=0)
    with pytest.raises(AcganError, match=r"models:/acgan-synthetic@nope: could not load from"):
        generate_images("models:/acgan-synthetic@nope", tmp_path / "g", tracking_uri=project.store)
    assert not (tmp_path / "g").exists()


def test_generate_without_champion_falls_back_to_candidate_and_names_what_exists(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from acgan.cli import main
    from acgan.registry.generate import choose_model

    name, uri = "acgan-synthetic", project.store
    monkeypatch.chdir(project.root)  # where reports/monitor/ensemble.json is
    local = "--model reports/monitor/ensemble.json"
    with pytest.raises(AcganError) as err:
        choose_model(f"models:/{name}@nope", name, uri)
    msg = str(err.value)
    assert "has no alias @nope" in msg and "@candidate = v1, @champion = v1" in msg
    assert "its versions: 1" in msg and local in msg
    with pytest.raises(AcganError, match=r"has no version 9 .*its versions: 1"):
        choose_model(f"models:/{name}/9", name, uri)
    with pytest.raises(AcganError, match=rf"no registered model 'other' .*models there: {name}"):
        choose_model("models:/other@champion", name, uri)
    assert choose_model(None, name, uri) == (f"models:/{name}@champion", None)

    client = MlflowClient(uri)
    client.delete_registered_model_alias(name, "champion")  # as after a failed gate
    try:
        chosen, note = choose_model(None, name, uri)
        assert chosen == f"models:/{name}@candidate" and "using @candidate, version 1" in note
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        out = tmp_path / "x"
        main(["generate", "--classes", "0,1", "--n", "2", "--out", str(out)])  # the defaults
        assert sorted(len(list(d.iterdir())) for d in out.iterdir()) == [2, 2]
        client.delete_registered_model_alias(name, "candidate")
        with pytest.raises(AcganError, match=rf"has no alias @champion .*aliases: none.*{local}"):
            choose_model(None, name, uri)
    finally:
        client.set_registered_model_alias(name, "candidate", 1)
        client.set_registered_model_alias(name, "champion", 1)
