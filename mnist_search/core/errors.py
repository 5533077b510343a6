"""The errors a command turns into one `error: ...` line and an exit code, importable without
torch, MLflow or Optuna: the CLI names them before it knows which of those it will need, so that
`--help` and a usage error answer in well under a second.

The modules that raise them import them from here (and so still export them: `data.DataError`).
"""

from __future__ import annotations

from mnist_search.core.config import ConfigError
from mnist_search.core.waiting import ServiceError


class DataError(Exception):
    """MNIST files are missing or corrupt; the message names the file and is one line."""


class DeviceError(ValueError):
    """--device names a device that is unknown or not present; one line for the user."""


class StorageError(ServiceError):
    """The storage URL cannot be parsed or the database cannot be reached; one line."""


class TrackingError(ServiceError):
    """The tracking server cannot be reached or refused us; one line for the user."""


class BudgetError(ValueError):
    """No architecture in the search space fits the budget."""


class NoSpace(Exception):
    """Too little free disk space for the local store to take what is about to be written."""


class ExportError(Exception):
    """The trial's checkpoint cannot be found or read."""


class RunFailed(Exception):
    """A fault mid-run that ends a command with one line and exit code 1 (a tracking server that
    went away); what finished is kept."""


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite; the run cannot continue."""


# Wrong input, found before anything is written: one line, exit 2.
USAGE_ERRORS = (
    ConfigError, DataError, DeviceError, StorageError, TrackingError, BudgetError, ExportError, NoSpace
)  # fmt: skip
