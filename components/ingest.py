"""Ingest: the pipeline's first task. Builds the configuration from the pipeline parameters,
reads the source into Parquet shards, and opens the MLflow parent run that every later task
logs under (its id is passed down, so a cluster run and a local run look the same).

Its inputs are the configuration parameters of :data:`acgan.kfp_runtime.PARAMETERS` (a test
keeps the two equal; KFP reads a component's signature from its source, so it is written out).
"""

from typing import NamedTuple

from kfp.dsl import Dataset, Output

from components.common import component


@component()
def ingest(
    source: str,
    data_root: str,
    resolution: int,
    classes_per_split: int,
    steps: int,
    batch_size: int,
    seed: int,
    tracking_uri: str,
    experiment: str,
    model_name: str,
    overrides: list,
    data: Output[Dataset],
) -> NamedTuple("IngestOutputs", [("config", str), ("parent_run_id", str)]):
    params = {k: v for k, v in locals().items() if k != "data"}  # the parameters, by name
    import json
    import os
    from collections import namedtuple
    from pathlib import Path

    from acgan.config import replace
    from acgan.data.ingest import ingest as run_ingest
    from acgan.data.splits import plan_splits
    from acgan.kfp_runtime import TASK_SOURCE, build_config
    from acgan.lineage import make_tracker, open_pipeline_run

    cfg = build_config(params, dict(os.environ))
    manifest = run_ingest(cfg.data, Path(data.path))
    # split.ids names the splits DVC trains; here the plan itself decides them, and they
    # are part of the run's identity, so they are settled before the parent run is opened.
    # A too-large classes_per_split fails here, before anything trains.
    ids = [s.id for s in plan_splits(manifest.class_names, cfg.split)]
    cfg = replace(cfg, split={"ids": ids})
    tracker = make_tracker(cfg.tracking, *TASK_SOURCE)
    parent = open_pipeline_run(tracker, cfg, manifest.content_hash)
    data.metadata.update(
        {
            "images": manifest.total,
            "classes": len(manifest.class_names),
            "resolution": manifest.resolution,
            "content_hash": manifest.content_hash,
        }
    )
    outputs = namedtuple("IngestOutputs", ["config", "parent_run_id"])
    return outputs(json.dumps(cfg.to_dict()), parent.run_id)
