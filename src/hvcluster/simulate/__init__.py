"""Deterministic simulation of a whole cluster (``hvc sim``): the real node agents,
controllers and elections on one memory store and sim drivers, all on one
:class:`~hvcluster.clock.ManualClock`, so virtual minutes take milliseconds and the same seed
gives the same run. Shared by the shipped command and the test suite (tests/sim)."""
