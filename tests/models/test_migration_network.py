"""The migration network and a migration's own bandwidth cap, as the models hold them: a
node's migration address (its API address unless set), and the settings a source runs a
capped migration with."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hvcluster.models.config import MigrationSettings
from hvcluster.models.migration import Migration, settings_for
from hvcluster.models.node import Capacity, Node


def node(**over: object) -> Node:
    return Node.model_validate(
        {"name": "n1", "address": "10.0.0.1", "capacity": Capacity(cpus=1, memory_mib=512)} | over
    )


def test_a_node_is_migrated_to_at_its_migration_address_else_its_address() -> None:
    assert node().migration_host == "10.0.0.1"  # records from before it existed too
    assert node(migration_address="10.9.0.1").migration_host == "10.9.0.1"
    assert node(address="fd00::1").migration_host == "fd00::1"


@pytest.mark.parametrize("bad", ["0.0.0.0", "::", "1.2.3.999", "a b", "tcp:1.2.3.4:5", "x" * 300])
def test_a_bad_migration_address_is_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(ValidationError, match="migration_address"):
        node(migration_address=bad)


def test_a_migrations_cap_replaces_the_clusters_for_precopy_and_postcopy() -> None:
    cluster = MigrationSettings(max_bandwidth_mib_s=5000, postcopy=True)
    rec = Migration(id="m1", vm="web", source="n1")
    assert settings_for(rec, cluster) is cluster  # no cap of its own: the cluster's
    capped = settings_for(rec.model_copy(update={"max_bandwidth_mib_s": 40}), cluster)
    assert (capped.max_bandwidth_mib_s, capped.max_postcopy_bandwidth_mib_s) == (40, 40)
    assert capped.postcopy and cluster.max_postcopy_bandwidth_mib_s == 0  # (0: no cap)


@pytest.mark.parametrize("cap", [0, -1, 10**7])
def test_a_records_cap_is_bounded(cap: int) -> None:
    with pytest.raises(ValidationError, match="max_bandwidth_mib_s"):
        Migration(id="m1", vm="web", source="n1", max_bandwidth_mib_s=cap)
