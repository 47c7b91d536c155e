"""Drivers hide the hypervisor: the cluster controls VMs only through the contract of
:mod:`hvcluster.drivers.base`.

- :mod:`hvcluster.drivers.qemu`: real VMs, one detached QEMU each, through QMP;
- :mod:`hvcluster.drivers.sim`: simulated VMs with a resource model, for scale, demos and
  deterministic simulation;
- :mod:`hvcluster.drivers.registry`: drivers chosen by name (the agent names none);
- :mod:`hvcluster.drivers.parts`: the collaborators a driver is composed of (migration,
  save/restore, disk moves) and the requests the contract hands them;
- :mod:`hvcluster.drivers.runtime`: the per-VM runtime dirs both share, and the synchronous
  helpers the node watchdog uses to kill every VM of a node.

This layer imports only :mod:`hvcluster.models`, the host's plumbing (:mod:`hvcluster.host`)
and the test guest (:mod:`hvcluster.guestimage`, which the KVM probe boots).
"""
