"""The MLflow model registry adapter: the ensemble as a pyfunc model, gated registration with
``@candidate`` / ``@champion`` aliases, and loading it back for ``acgan generate``.

This package (with :mod:`acgan.tracking`) is the only part of the core that imports MLflow;
it wraps :mod:`acgan.models.ensemble`, it does not own it. Import the submodules directly
(``acgan.registry.register``, ``acgan.registry.generate``) so that importing the package
stays cheap.
"""
