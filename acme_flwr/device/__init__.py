"""Device tier (the device half of ACME Part III): headers and gates, Taylor importance, the pruner, local training.

Importing this package registers every header, the searched one included, so ``create_header`` knows all names.
"""

from acme_flwr.device import searched_header as _searched_header  # noqa: F401 - registers the "searched" header
from acme_flwr.device.headers import create_header, list_headers

__all__ = ["create_header", "list_headers"]
