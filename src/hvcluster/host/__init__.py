"""This host's plumbing, below the agent and the drivers: bridges and taps (``ip``,
:mod:`hvcluster.host.network`), shared volumes as the file system sees them
(:mod:`hvcluster.host.storage`), disk images (``qemu-img``, :mod:`hvcluster.host.qemuimg`) and
bounded host commands (:mod:`hvcluster.host.run`).

Nothing here reads the store or knows a driver: this layer imports only
:mod:`hvcluster.models`.
"""
