"""The REST service and web page: ``bloodcell serve``, :func:`serve` or :func:`create_app`."""

from bloodcell.server.app import create_app
from bloodcell.server.run import serve

__all__ = ["create_app", "serve"]
