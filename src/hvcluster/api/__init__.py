"""The REST API served by every agent: it writes intent to the store and reads state back.

Layer rule: imports only ``store`` and ``models``.
"""

from hvcluster.api.app import create_app

__all__ = ["create_app"]
