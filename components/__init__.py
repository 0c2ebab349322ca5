"""Kubeflow components: one module per stage, each a thin ``@dsl.component`` that calls the
``acgan`` package (the same functions ``dvc repro`` runs through the CLI)."""

from components.evaluate import evaluate, judge
from components.ingest import ingest
from components.monitor import monitor
from components.register import register
from components.split import split
from components.train import train

__all__ = ["evaluate", "ingest", "judge", "monitor", "register", "split", "train"]
