"""The REST service and web page: ``bloodcell serve`` or :func:`create_app`."""

from bloodcell.server.app import create_app

__all__ = ["create_app"]
