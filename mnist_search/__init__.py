"""mnist-search: budget-constrained architecture search for tiny MNIST networks."""

from .core import settings  # noqa: F401  -- first: MLflow's environment defaults before MLflow loads

__version__ = "0.1.0"
