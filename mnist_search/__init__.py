"""mnist-search: budget-constrained architecture search for tiny MNIST networks."""

__version__ = "0.1.0"
