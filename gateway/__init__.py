"""The gateway: a Flask service with one blueprint per resource (see ``gateway.app``)."""

from gateway.app import create_app

__all__ = ["create_app"]
