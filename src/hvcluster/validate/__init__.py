"""Cluster validation, pure: facts (:class:`hvcluster.models.validation.ValidationFacts`) in,
a report out. No I/O, no clock: the API gathers the facts and calls :func:`validate`.

Layer rule: imports only ``models``.
"""

from hvcluster.validate.checks import validate
from hvcluster.validate.common import Thresholds

__all__ = ["Thresholds", "validate"]
