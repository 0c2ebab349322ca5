"""Pure metric functions shared by the split stage, the collapse monitor and evaluation.

:mod:`acgan.metrics.msssim` is the one MS-SSIM implementation (protocol per resolution in
``PROTOCOL``). Submodules are imported explicitly by their users, so that importing one metric
does not import the heavy dependencies of another.
"""
