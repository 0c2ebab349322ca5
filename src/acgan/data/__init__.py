"""Data stages and formats.

* :mod:`acgan.data.synthetic` — the built-in, deterministic dataset of ten shape classes;
* :mod:`acgan.data.sources` — iterate any configured source (synthetic, torchvision, ImageFolder);
* :mod:`acgan.data.shards` — Parquet shards of PNG bytes: write, read, decode into memory;
* :mod:`acgan.data.ingest` — the ingest stage (source -> shards + ``manifest.json``);
* :mod:`acgan.data.splits` — the split stage (class groups + real-image MS-SSIM reference).

Nothing is imported here on purpose: the trainer needs only :mod:`~acgan.data.shards` and
:mod:`~acgan.data.splits`, and should not pay for torchvision's import.
"""
