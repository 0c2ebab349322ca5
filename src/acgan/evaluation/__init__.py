"""The evaluation: the judge stage (:mod:`.judge`), the evaluate stage (:mod:`.stage`), its
gate (:mod:`.gate`) and its reports (:mod:`.report`).

Submodules are imported explicitly by their users (the CLI, the KFP components), so that
importing the gate does not import torch or matplotlib. Evaluation never imports the registry:
the registry reads ``gate.json`` and ``metrics.json``.
"""
