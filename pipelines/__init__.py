"""The Kubeflow pipeline (``acgan.py``), its local runner and cluster submission."""
