"""Benchmarks: throughput and overhead harnesses that print tables (never asserted in tests).

``python -m benchmarks`` runs them all; each module also runs alone (``--help``).
"""
