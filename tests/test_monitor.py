"""The collapse monitor: detector, in-training actions (stop, rollback), the monitor stage, CLI.

Collapse is produced for real, not simulated: a step hook zeroes the generator's noise weights
(in G and its EMA copy) from a given step on, so every sample of a class is the same image —
per-class mode collapse — and the actual monitor, trainer and checkpoints react to it. The
explicit threshold 0.999 sits between an untrained generator (about 0.97) and that collapse
(1.0), so a few training steps suffice.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from acgan import checkpoint
from acgan.config import Config, replace
from acgan.data.shards import read_images
from acgan.data.splits import load_plan
from acgan.errors import AcganError, DataError
from acgan.models.acgan import Generator
from acgan.models.ensemble import read_manifest
from acgan.monitor import status
from acgan.monitor.detector import (
    COLLAPSED,
    COLLAPSING,
    HEALTHY,
    NOT_CONVERGED,
    apply_rule,
    monitor_seed,
    replay,
    sample_msssim,
    split_status,
    thresholds_for,
)
from acgan.monitor.hook import CollapseMonitor
from acgan.monitor.stage import run_monitor, set_aside
from acgan.train import train_split, train_split_with_monitor

# One check per step; the trainer's own checkpoints only at the end, so that the checkpoints
# seen are the monitor's healthy ones.
MON = (
    "train.batch_size=8",
    "train.log_every=1",
    "train.sample_every=1000",
    "train.checkpoint_every=1000",
    "monitor.every=1",
    "monitor.pairs=4",
    "monitor.threshold=0.999",
    "monitor.rise=0",  # the injected collapse rises from ~0.97 to 1.0
    "monitor.warmup=0",  # a collapse injected at any step counts
)


class CollapseInjector:
    """From step ``start`` on (while the monitor's rollback count is in ``branches``, if
    given; in the run of seed ``seed`` only, if given), make G and its EMA copy ignore the
    noise: one image per class."""

    every = 1

    def __init__(
        self, start: int, branches: tuple[int, ...] | None = None, seed: int | None = None
    ) -> None:
        self.start, self.branches, self.seed = start, branches, seed

    def __call__(self, ctx: Any) -> None:
        rollbacks = ctx.state.monitor.rollbacks if ctx.state.monitor is not None else 0
        if ctx.state.step < self.start or rollbacks not in (self.branches or (rollbacks,)):
            return
        if self.seed is not None and ctx.seed != self.seed:
            return
        with torch.no_grad():
            for G in (ctx.state.G, ctx.state.sampler):
                G.fc.weight[:, G.num_classes :] = 0.0


class Spy:
    """Records (step, monitor events so far, copies of G, D and EMA G) at every call."""

    every = 1

    def __init__(self) -> None:
        self.records: list[tuple[int, int, dict[str, dict[str, torch.Tensor]]]] = []

    def __call__(self, ctx: Any) -> None:
        s = ctx.state
        models = {"G": s.G, "D": s.D, "EMA": s.sampler}
        snap = {
            k: {n: t.detach().clone() for n, t in m.state_dict().items()} for k, m in models.items()
        }
        n_events = sum(e.get("source") == "monitor" for e in ctx.events)
        self.records.append((s.step, n_events, snap))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _monitor_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("source") == "monitor"]


# -- the detector ------------------------------------------------------------------------


class RealImages(nn.Module):
    """Serves real images of a split as 'samples': G(z, y) is a real image of class y, a
    different one for each code of the batch (codes ranked within the class)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, latent_dim: int = 100) -> None:
        super().__init__()
        self.classes = sorted(set(labels.tolist()))
        self.per_class = [images[labels == c].float() / 127.5 - 1.0 for c in self.classes]
        self.num_classes, self.latent_dim = len(self.classes), latent_dim
        self.resolution = images.shape[-1]
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(z), *self.per_class[0].shape[1:])
        for y in labels.unique().tolist():
            pos = (labels == y).nonzero().squeeze(1)
            assert len(pos) <= len(self.per_class[y]), "more codes than real images"
            out[pos] = self.per_class[y][z[pos, 0].argsort().argsort()]
        return out


def test_detector_flags_identical_samples_not_real_data(
    make_cfg: Callable[..., Config], synthetic_splits: Path
) -> None:
    # 8 pairs of 20 images per class: sampling noise of ~0.05 against the reference's own, so
    # a wider margin than the default 0.05 (which assumes monitor.pairs 50, reference 100)
    cfg = make_cfg(
        "monitor.pairs=8", "monitor.patience=2", "monitor.rise=0.1", "monitor.margin=0.15"
    )
    plan = load_plan(synthetic_splits)
    spec = plan.split(0)
    names = list(spec.class_names)
    thresholds = thresholds_for(cfg.monitor, spec.classes, names, plan.reference_msssim)
    for c, n in zip(spec.classes, names, strict=True):  # each class against its own reference
        assert thresholds[n] == pytest.approx(plan.reference_msssim[c] + cfg.monitor.margin)

    data = read_images(plan.split_dir(0))
    real = sample_msssim(RealImages(data.images, data.labels), cfg.monitor.pairs, seed=3)
    torch.manual_seed(0)
    same = Generator(5, 100, 32, 3)
    with torch.no_grad():
        same.fc.weight[:, 5:] *= 1e-4  # the noise barely matters: near-identical samples
    collapsed = sample_msssim(same, cfg.monitor.pairs, seed=3)
    assert all(r <= thresholds[n] < c for r, c, n in zip(real, collapsed, names, strict=True))
    assert min(collapsed) > 0.99

    states: dict[str, dict[str, Any]] = {}
    for _ in range(4):  # real data stays healthy however long it is watched
        checks = apply_rule(states, dict(zip(names, real, strict=True)), thresholds, 2, 0.1)
        assert {c.status for c in checks} == {HEALTHY}
    first = apply_rule(states, dict(zip(names, collapsed, strict=True)), thresholds, 2, 0.1)
    assert {c.status for c in first} == {COLLAPSING}  # patience 2: one check is not enough
    second = apply_rule(states, dict(zip(names, collapsed, strict=True)), thresholds, 2, 0.1)
    assert all(c.newly_collapsed and c.status == COLLAPSED for c in second)
    # Identical samples from the start never were diverse: not converged, not collapsed.
    fresh: dict[str, dict[str, Any]] = {}
    for _ in range(3):
        checks = apply_rule(fresh, dict(zip(names, collapsed, strict=True)), thresholds, 2, 0.1)
        assert {c.status for c in checks} == {NOT_CONVERGED}


def test_a_class_hovering_at_its_threshold_is_not_collapsed() -> None:
    """The case that excluded a whole split: 0.60 once, then 0.625 against a 0.607 threshold.
    Above the threshold but within ``rise`` of its best it is not converged, not collapsed;
    a real loss of diversity (0.60 -> 0.85) is a collapse."""
    t = {"a": 0.607}
    states: dict[str, dict[str, Any]] = {}
    for v in (0.9, 0.60, 0.625, 0.63, 0.62):
        (check,) = apply_rule(states, {"a": v}, t, 2, 0.1)
    assert check.status == NOT_CONVERGED and not check.newly_collapsed
    statuses = [apply_rule(states, {"a": v}, t, 2, 0.1)[0].status for v in (0.85, 0.86)]
    assert statuses == [COLLAPSING, COLLAPSED]
    assert split_status([HEALTHY, NOT_CONVERGED]) == NOT_CONVERGED
    assert split_status([NOT_CONVERGED, COLLAPSED, HEALTHY]) == COLLAPSED
    assert split_status([HEALTHY, HEALTHY]) == HEALTHY


def test_checks_in_the_warm_up_do_not_arm_the_rule() -> None:
    """A generator still drawing noise scores as diverse (0.15) and rises as it learns the
    shapes (0.45): within ``monitor.warmup`` that is learning, not a collapse; after it, the
    same fall in diversity is one."""
    t = {"a": 0.3}
    curve = [(100, {"a": 0.15}), (200, {"a": 0.2}), (300, {"a": 0.45}), (400, {"a": 0.46})]
    learning = replay(curve, t, 2, 0.1, warm_step=500)
    assert learning["a"]["status"] == NOT_CONVERGED and not learning["a"]["armed"]
    assert learning["a"]["best"] is None
    later = [(600, {"a": 0.25}), (700, {"a": 0.45}), (800, {"a": 0.46})]
    assert replay([*curve, *later], t, 2, 0.1, warm_step=500)["a"]["status"] == COLLAPSED
    assert replay(curve, t, 2, 0.1)["a"]["status"] == COLLAPSED  # no warm-up: called collapsed


def test_exclusion_never_keeps_a_less_diverse_split() -> None:
    """A collapsed split leaves the ensemble only when it is less diverse than every split
    that stays: every kept split is more diverse than every excluded one."""
    recs = {
        0: {"status": COLLAPSED, "excess": 0.02},  # lost diversity, but still beats split 1
        1: {"status": NOT_CONVERGED, "excess": 0.15},  # never diverse, and further away
        2: {"status": HEALTHY, "excess": -0.05},
        3: {"status": COLLAPSED, "excess": 0.30},  # worse than everything kept
    }
    aside = set_aside(recs)
    assert aside == {3}
    kept = [r["excess"] for sid, r in recs.items() if sid not in aside]
    assert max(kept) < min(recs[s]["excess"] for s in aside)
    assert set_aside({0: {"status": NOT_CONVERGED, "excess": 0.5}}) == set()
    # every split collapsed: none is less diverse than a kept one, so the ensemble keeps them
    # (their status says collapsed; the gate judges the samples)
    assert set_aside({0: {"status": COLLAPSED, "excess": 0.5}}) == set()
    assert set_aside({0: recs[0], 3: recs[3]}) == set()


# -- in-training actions -------------------------------------------------------------------


def test_rollback_restores_the_checkpoint_it_names(
    make_cfg: Callable[..., Config], synthetic_splits: Path, tmp_path: Path
) -> None:
    cfg = make_cfg(
        *MON,
        "train.steps=3",
        "monitor.action=rollback",
        "monitor.patience=1",
        "monitor.rollback_lr_factor=0.5",
    )
    plan = load_plan(synthetic_splits)
    before, after = Spy(), Spy()  # the weights the monitor sees, and those it leaves
    hooks = [
        CollapseInjector(start=2, branches=(0, 1)),  # collapse twice, then leave it alone
        before,
        CollapseMonitor.from_config(cfg, plan.reference_msssim),
        after,
    ]
    res = train_split(
        cfg, 0, synthetic_splits, tmp_path / "out", tmp_path / "ck", progress=False, hooks=hooks
    )
    events = _monitor_events(res.events)
    assert len(events) == 10 and {e["action"] for e in events} == {"rollback"}  # 5 classes x 2
    ev, ev2 = events[0], events[5]
    assert ev["step"] == 2 and ev["restored_step"] == 1 and ev["value"] > ev["threshold"]
    assert ev["lr"] == pytest.approx(cfg.train.lr * 0.5) and ev["rollback"] == 1
    # The second rollback lowers the learning rate again, and draws another seed.
    assert ev2["restored_step"] == 1 and ev2["rollback"] == 2
    assert ev2["lr"] == pytest.approx(cfg.train.lr * 0.25) and ev2["seed"] != ev["seed"]

    healthy = next(snap for step, _, snap in before.records if step == 1)
    collapsed_at_2 = next(snap for step, _, snap in before.records if step == 2)
    restored_step, _, restored = next(r for r in after.records if r[1] == 5)
    assert restored_step == 1
    for k in ("G", "D", "EMA"):
        assert _same(restored[k], healthy[k]), k  # exactly the weights of step 1 ...
        assert not _same(restored[k], collapsed_at_2[k]), k  # ... not the collapsed ones
    # Training went on from there with the new learning rate to the full budget.
    assert res.step == 3 and not res.stopped_early
    hist = json.loads((res.out_dir / "history.json").read_text())
    steps = [h["step"] for h in hist["history"]]
    assert steps == [1, 2, 3]  # each step once: the abandoned steps 2 are gone
    curve = hist["monitor"]["curve"]
    assert [(e["step"], e.get("discarded", False)) for e in curve] == [
        (1, False),
        (2, True),
        (2, True),
        (2, False),
        (3, False),
    ]
    assert hist["monitor"]["rollbacks"] == 2
    ck = checkpoint.load(checkpoint.step_path(next((tmp_path / "ck").glob("split_0/*")), 3))
    assert ck["lr_scale"] == pytest.approx(0.25) and ck["seed"] == ev2["seed"]


def test_stop_keeps_the_last_healthy_checkpoint(
    make_cfg: Callable[..., Config], synthetic_splits: Path, tmp_path: Path
) -> None:
    cfg = make_cfg(*MON, "train.steps=5", "monitor.action=stop", "monitor.patience=2")
    spy = Spy()
    args = (cfg, 1, synthetic_splits, tmp_path / "out", tmp_path / "ck")
    res = train_split_with_monitor(*args, progress=False, hooks=[CollapseInjector(start=2), spy])
    # Checks: 1 healthy, 2 collapsing, 3 collapsed -> stop, back to step 1.
    events = _monitor_events(res.events)
    assert {(e["step"], e["action"], e["restored_step"]) for e in events} == {(3, "stop", 1)}
    assert res.stopped_early and res.step == 1
    summary = json.loads((res.out_dir / "train.json").read_text())
    assert summary["step"] == 1 and summary["stopped_early"]
    healthy = next(snap for step, _, snap in spy.records if step == 1)
    delivered = checkpoint.load(res.out_dir / "generator.pt")["state_dict"]
    assert _same(delivered, healthy["EMA"])
    ck_dir = next((tmp_path / "ck").glob("split_1/*"))
    assert [s for s, _ in checkpoint.list_steps(ck_dir)] == [1]  # the collapsed tail is gone

    # Running the same training again reproduces the stop instead of training past it.
    again = train_split_with_monitor(*args, progress=False)
    assert again.resumed_from == 1 and again.step == 1 and again.stopped_early
    assert _same(checkpoint.load(again.out_dir / "generator.pt")["state_dict"], healthy["EMA"])


# -- the monitor stage ---------------------------------------------------------------------


@pytest.fixture
def models_with_collapse(
    make_cfg: Callable[..., Config], tiny_trained: Any, tmp_path: Path
) -> tuple[Config, Path]:
    """models/split_0 collapsed (action warn: trained on), models/split_1 trained normally
    (the shared tiny run's: the stage replays its curve against its own threshold)."""
    cfg = make_cfg(*MON, "train.steps=3", "monitor.patience=2", "monitor.retrain_collapsed=false")
    models = tmp_path / "models"
    train_split_with_monitor(
        cfg,
        0,
        tiny_trained.splits,
        models / "split_0",
        tmp_path / "checkpoints",
        progress=False,
        hooks=[CollapseInjector(start=2)],
    )
    shutil.copytree(tiny_trained.model_dirs[1], models / "split_1")
    return cfg, models


def test_run_monitor_excludes_a_collapsed_split(
    models_with_collapse: tuple[Config, Path],
    synthetic_splits: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg, models = models_with_collapse
    monkeypatch.chdir(tmp_path)  # relative paths, as dvc runs the stage
    res = run_monitor(
        replace(cfg, monitor={"retrain_collapsed": False}),
        synthetic_splits,
        Path("models"),
        Path("reports/monitor"),
        progress=False,
    )
    out = tmp_path / "reports/monitor"
    for name in ("monitor.json", "ensemble.json", "report.html", "config.json"):
        assert (out / name).is_file(), name
    for sid in (0, 1):
        assert (out / f"plots/split_{sid}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "monitor.json").read_text())
    s0, s1 = doc["splits"]["0"], doc["splits"]["1"]
    assert s0["status"] == COLLAPSED and set(s0["collapsed_classes"]) == set(s0["classes"])
    assert all(c["final_msssim"] > 0.999 and c["collapsed"] for c in s0["classes"].values())
    assert all(c["reference"] < c["threshold"] for c in s0["classes"].values())
    assert [e["step"] for e in s0["events"]] == [3] * 5
    assert s1["status"] in (HEALTHY, NOT_CONVERGED) and not s1["collapsed_classes"]
    assert s1["excess"] < s0["excess"]
    assert doc["excluded"][0]["split_id"] == 0 and "collapsed" in doc["excluded"][0]["reason"]
    assert read_manifest(out / "ensemble.json") == [tmp_path / "models/split_1"]
    assert [e["split_id"] for e in res.excluded] == [0]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "Excluded from the ensemble" in html
    # the headline speaks the shared vocabulary and carries the class tally
    assert f"Split 0: {status.badge(COLLAPSED)} <small>5 of 5 classes collapsed</small>" in html
    assert doc["excluded"][0]["status"] == COLLAPSED


def test_the_trainer_retrains_a_collapsed_split_and_the_stage_says_so(
    models_with_collapse: tuple[Config, Path],
    synthetic_splits: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """monitor.retrain_collapsed: the trainer, not the monitor stage, trains a split its
    monitor left collapsed once more from scratch (new seed) into the same output."""
    from acgan.train.state import split_seed

    cfg, models = models_with_collapse
    cfg = replace(cfg, monitor={"retrain_collapsed": True})
    first_seed = split_seed(cfg.train.seed, 0)
    res = train_split_with_monitor(
        cfg, 0, synthetic_splits, models / "split_0", tmp_path / "ck2", progress=False,
        hooks=[CollapseInjector(start=2, seed=first_seed)],  # the first attempt collapses
    )  # fmt: skip
    assert res.attempt == 1 and not res.collapsed and res.step == 3
    summary = json.loads((models / "split_0/train.json").read_text())
    assert summary["attempt"] == 1 and summary["seed"] == split_seed(cfg.train.seed, 0, 1)
    first = summary["retrained_from"]
    assert first["attempt"] == 0 and first["step"] == 3 and len(first["collapsed_classes"]) == 5
    assert {e["step"] for e in first["events"]} == {3}
    assert not summary.get("collapsed_classes")
    ck = {p.name[-2:] for p in (tmp_path / "ck2/split_0").iterdir()}
    assert ck == {"a0", "a1"}  # each attempt its own checkpoints: a re-run resumes both

    monkeypatch.chdir(tmp_path)
    out = run_monitor(cfg, synthetic_splits, Path("models"), Path("mon"), progress=False)
    assert not out.excluded
    doc = json.loads((tmp_path / "mon/monitor.json").read_text())
    s0 = doc["splits"]["0"]
    assert s0["status"] == "retrained" and doc["members"][0]["status"] == "retrained"
    assert s0["retrained"]["status"] != COLLAPSED
    assert s0["retrained"]["first_attempt"]["collapsed_classes"] == first["collapsed_classes"]
    assert (
        "Retrained once in training with a new seed" in (tmp_path / "mon/report.html").read_text()
    )


def test_run_monitor_bad_input_is_one_line(tiny_trained: Any, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_trained.model_dirs[0], models / "split_0")
    with pytest.raises(AcganError) as err:  # split 1 has no output
        run_monitor(tiny_trained.cfg, tiny_trained.splits, models, tmp_path / "out", progress=False)
    assert "split 1" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()

    shutil.copytree(tiny_trained.model_dirs[1], models / "split_1")
    (models / "split_1/history.json").write_text("{not json")
    with pytest.raises(DataError) as err:
        run_monitor(tiny_trained.cfg, tiny_trained.splits, models, tmp_path / "out", progress=False)
    assert "split_1/history.json" in str(err.value) and "\n" not in str(err.value)


def test_monitor_cli_end_to_end_with_mlflow(
    tiny_trained: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from conftest import SMALL_OVERRIDES, TINY_TRAIN
    from mlflow.tracking import MlflowClient

    from acgan.cli import main

    monkeypatch.chdir(tmp_path)  # no params.yaml here: defaults + --set
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [*SMALL_OVERRIDES, *TINY_TRAIN, "tracking.enabled=true", f"tracking.uri={uri}"]
    models = tiny_trained.model_dirs[0].parent
    argv = ["monitor", "--splits", str(tiny_trained.splits), "--models", str(models)]
    argv += ["--out", "mon", *[a for s in sets for a in ("--set", s)]]
    main(argv)  # returns on success; exits with status 2 on bad input
    out = capsys.readouterr().out
    assert "split 0:" in out and "ensemble of 2 split(s)" in out
    assert len(read_manifest(tmp_path / "mon/ensemble.json")) == 2

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("acgan")
    (run,) = client.search_runs([exp.experiment_id], "tags.`acgan.stage` = 'monitor'")
    assert run.data.metrics["ensemble_members"] == 2
    assert any(k.startswith("final_msssim/split_0/") for k in run.data.metrics)
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"monitor.json", "report.html", "ensemble.json", "plots"} <= arts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/split_0.png", "plots/split_1.png"}
    assert run.data.tags["mlflow.parentRunId"]
    doc = json.loads((tmp_path / "mon/monitor.json").read_text())
    health = {k: r["status"] for k, r in doc["splits"].items()}
    assert json.loads(run.data.tags["acgan.split_health"]) == health
    assert run.data.tags["mlflow.source.name"] == "acgan monitor"

    # Bad input: a missing split output is one line on stderr and exit status 2.
    argv[argv.index("--models") + 1] = str(tmp_path / "nothing")
    with pytest.raises(SystemExit) as failed:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert failed.value.code == 2 and err.startswith("acgan: error: ") and "\n" not in err
    assert "split 0" in err


def test_fixed_codes_make_the_stage_agree_with_training(tiny_trained: Any) -> None:
    """The monitor stage re-measures the delivered weights on the codes training used."""
    hist = json.loads((tiny_trained.model_dirs[0] / "history.json").read_text())
    last = hist["monitor"]["curve"][-1]
    from acgan.models.ensemble import load_member

    G = load_member(tiny_trained.model_dirs[0]).G
    again = sample_msssim(G, tiny_trained.cfg.monitor.pairs, monitor_seed(0))
    assert last["step"] == tiny_trained.cfg.train.steps
    names = json.loads((tiny_trained.model_dirs[0] / "train.json").read_text())["class_names"]
    assert [last["values"][n] for n in names] == pytest.approx(again, abs=1e-5)


def test_the_monitor_imports_nothing_of_the_trainer() -> None:
    """The monitor detects and decides; the trainer imports it, never the other way round."""
    import subprocess
    import sys

    code = (
        "import sys, acgan.monitor.stage, acgan.monitor.hook, acgan.monitor.report; "
        "print(sorted(m for m in sys.modules if m.startswith('acgan.train')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
