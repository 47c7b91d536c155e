"""Drivers chosen by name: the agent asks for ``qemu`` or ``sim`` (its config's ``driver``)
and gets a :class:`~hvcluster.drivers.base.Driver`, without naming a concrete driver (an
import-linter contract keeps the agent from importing one).

Each driver package has a ``create(options)``; it is imported here by name, when asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal, cast

from hvcluster.drivers.base import Driver
from hvcluster.guestimage.image import DEFAULT_CACHE
from hvcluster.models.base import Model
from hvcluster.models.errors import ConfigError
from hvcluster.models.guestcpu import QEMU_DEFAULT

DRIVERS = {"qemu": "hvcluster.drivers.qemu", "sim": "hvcluster.drivers.sim"}


class DriverOptions(Model):
    """What the agent config says about its driver (each driver takes what concerns it)."""

    run_dir: Path
    accelerator: Literal["auto", "kvm", "tcg"] = "auto"  # qemu
    cache_dir: Path = DEFAULT_CACHE  # qemu: the guest image, the accelerator probe's verdict
    guest_cpu: str = QEMU_DEFAULT  # qemu: the model guests whose spec names none get
    sim_seed: int = 0  # sim


def make_driver(name: str, options: DriverOptions) -> Driver:
    """A new driver of kind ``name`` (:data:`DRIVERS`) for this host."""
    if name not in DRIVERS:
        raise ConfigError(f"no driver {name!r} (there are {', '.join(sorted(DRIVERS))})")
    module = importlib.import_module(DRIVERS[name])
    create = cast(Callable[[DriverOptions], Driver], module.create)
    return create(options)
