"""Drivers hide the hypervisor: the cluster controls VMs only through the contract of
:mod:`hvcluster.drivers.base`.

- :mod:`hvcluster.drivers.qemu`: real VMs, one detached QEMU each, through QMP;
- :mod:`hvcluster.drivers.sim`: simulated VMs with a resource model, for scale, demos and
  deterministic simulation;
- :mod:`hvcluster.drivers.runtime`: the per-VM runtime dirs both share, and the synchronous
  helpers the node watchdog uses to kill every VM of a node;
- :mod:`hvcluster.guestimage.image` and :mod:`hvcluster.guestimage.testguest`: the test guest.

This layer imports only :mod:`hvcluster.models`.
"""
