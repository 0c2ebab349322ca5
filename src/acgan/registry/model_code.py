"""Models-from-code entry point: MLflow runs this file when it loads a registered ensemble.

It is copied into every logged model instead of a pickle; the class comes from the installed
``acgan`` package, the weights from the model's ``generator.pt`` artifacts.
"""

from mlflow.models import set_model

from acgan.registry.pyfunc import EnsembleModel

set_model(EnsembleModel())
