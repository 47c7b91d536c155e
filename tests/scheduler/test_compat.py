"""The guest CPU model follows the VM: a live or quick move goes only to a node that can
provide the model the VM runs with (and, live, runs the same driver and accelerator). The
pure rule (models/guestcpu.py, re-exported by scheduler/compat.py), and how placement,
drain and failback honour it."""

from __future__ import annotations

import dataclasses
from typing import Any

from hvcluster.models.guestcpu import cannot_provide, move_blocker, provided, vm_cpu_model
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.migration import MigrationKind
from hvcluster.models.vm import FailbackMode, FailbackPolicy
from hvcluster.scheduler import Failback, NodeView, VMView, plan
from hvcluster.scheduler.compat import move_blockers, vm_model
from hvcluster.scheduler.drain import DrainMove, DrainStay, plan_drain
from hvcluster.scheduler.placement import Choice, Ledger, NoFit, choose_node
from tests.scheduler.factory import node, of, snap, vm

DRAINING = NodeAdminState.DRAINING
LIVE, QUICK = MigrationKind.LIVE, MigrationKind.QUICK


def cpu(
    name: str,
    model: str = "qemu64",
    *provides: str,
    admin: NodeAdminState = NodeAdminState.UP,
    **inv: Any,
) -> NodeView:
    """A node whose guests get ``model`` by default, providing ``provides`` too (and that
    sees volume csv, as every other node here: quick migration saves the state there)."""
    plain = node(name, admin=admin, volumes=("csv",))
    update = {"guest_cpu_model": model, **inv}
    if provides:
        update["guest_cpu_models"] = (model, *provides)
    inventory = plain.node.inventory.model_copy(update=update)
    return NodeView(plain.node.model_copy(update={"inventory": inventory}), alive=True)


def running(view: VMView, model: str) -> VMView:
    """``view`` whose status says its guest runs with ``model``."""
    assert view.status is not None
    return dataclasses.replace(view, status=view.status.model_copy(update={"cpu_model": model}))


def test_what_a_node_provides() -> None:
    assert provided(cpu("a").node.inventory) == ("qemu64",)  # no list: its default only
    assert provided(cpu("a", "EPYC", "qemu64").node.inventory) == ("EPYC", "qemu64")
    lacking = cpu("b", "EPYC", guest_cpu_problem="it lacks avx2").node
    assert provided(lacking.inventory) == ()
    assert cannot_provide(lacking, "EPYC") == "model EPYC not available on b: it lacks avx2"
    assert cannot_provide(cpu("c", "EPYC").node, "qemu64") == (
        "model qemu64 not available on c: it provides EPYC"
    )
    assert provided(node("old").node.inventory) == ("qemu64",)  # reported nothing: qemu64


def test_the_rule_is_the_vms_model_on_the_target() -> None:
    a, b = cpu("a").node, cpu("b", "EPYC", "qemu64").node
    assert move_blocker("qemu64", a, b, LIVE) is None  # b's default differs; it provides it
    assert move_blocker("qemu64", a, b, QUICK) is None
    assert move_blocker("EPYC", b, a, LIVE) == (
        "live and quick migration impossible from b to a (model EPYC not available on a: "
        "it provides qemu64): cold move only"
    )
    assert move_blocker("EPYC", b, a, QUICK) == move_blocker("EPYC", b, a, LIVE)
    assert move_blocker("EPYC", b, a, MigrationKind.STORAGE) is None
    kvm = cpu("d", accelerator="kvm").node
    assert "runs guests with tcg and d with kvm" in (move_blocker("qemu64", a, kvm, LIVE) or "")
    assert move_blocker("qemu64", a, kvm, QUICK) is None  # a saved state restores there
    sim = cpu("e", driver="sim").node
    assert "no quick migration between them" in (move_blocker("qemu64", a, sim, QUICK) or "")


def test_the_model_a_vm_runs_with() -> None:
    n1 = cpu("n1", "EPYC").node
    web = vm("web", on="n1")
    assert vm_cpu_model(web.spec, web.status, n1) == "EPYC"  # reported nothing: n1's default
    assert vm_cpu_model(running(web, "qemu64").spec, running(web, "qemu64").status, n1) == (
        "qemu64"
    )
    named = web.spec.model_copy(update={"cpu_model": "Haswell"})
    assert vm_cpu_model(named, web.status, n1) == "Haswell"
    assert vm_cpu_model(named, running(web, "qemu64").status, n1) == "qemu64"  # as it runs
    s = snap([cpu("n1", "EPYC")], [web])
    assert vm_model(s, web) == "EPYC"


def test_blockers_follow_the_vms_model_not_the_sources_default() -> None:
    # n1 now gives guests EPYC, but web was started with qemu64 (before, or on another node)
    web = running(vm("web", on="n1"), "qemu64")
    s = snap([cpu("n1", "EPYC", "qemu64"), cpu("n2"), cpu("n3", "EPYC")], [web])
    assert set(move_blockers(s, web, "n1", LIVE)) == {"n3"}
    assert set(move_blockers(s, web, "n1", QUICK)) == {"n3"}


def test_a_spec_that_names_a_model_only_lands_where_it_is_provided() -> None:
    s = snap([cpu("n1"), cpu("n2", "Haswell")], [])
    base = vm("db").spec
    named = base.model_copy(update={"cpu_model": "Haswell"})
    choice = choose_node(named, s, {}, Ledger(s))
    assert isinstance(choice, Choice) and choice.node == "n2"
    none = choose_node(named, s, {}, Ledger(s), {"n2": "n2 is excluded"})
    assert isinstance(none, NoFit)
    assert "db names CPU model Haswell not available on n1" in none.why


def test_drain_moves_live_where_the_vms_model_is_provided() -> None:
    s = snap(
        [cpu("n1", admin=DRAINING), cpu("n2", "EPYC"), cpu("n3", "EPYC", "qemu64")],
        [vm("a", on="n1")],
    )
    (move,) = of(plan_drain(s, []), DrainMove)
    assert (move.target, move.kind) == ("n3", LIVE)


def test_drain_stays_when_no_node_provides_the_model() -> None:
    s = snap([cpu("n1", admin=DRAINING), cpu("n2", "EPYC")], [vm("a", on="n1")])
    (stay,) = of(plan_drain(s, []), DrainStay)
    assert "model qemu64 not available on n2" in stay.reason


def test_drain_falls_back_to_quick_across_accelerators() -> None:
    s = snap([cpu("n1", admin=DRAINING), cpu("n2", accelerator="kvm")], [vm("a", on="n1")])
    (move,) = of(plan_drain(s, []), DrainMove)
    assert (move.target, move.kind) == ("n2", QUICK)
    assert "by quick migration (n1 runs guests with tcg and n2 with kvm" in move.reason
    stay = snap(
        [cpu("n1", admin=DRAINING), cpu("n2", accelerator="kvm")],
        [vm("a", on="n1")],
        migration={"drain_fallback": "stay"},
    )
    (kept,) = of(plan_drain(stay, []), DrainStay)
    assert "no live migration between them" in kept.reason


def test_failback_where_the_model_is_not_provided_is_a_cold_move() -> None:
    immediate = FailbackPolicy(mode=FailbackMode.IMMEDIATE)
    away = vm("web", on="n2", preferred=("n1",), failback=immediate)
    (d,) = of(plan(snap([cpu("n1", "EPYC"), cpu("n2")], [away])), Failback)
    assert not d.live
    assert "as a cold move: live and quick migration impossible from n2 to n1" in d.reason
    (d,) = of(plan(snap([cpu("n1", "EPYC", "qemu64"), cpu("n2")], [away])), Failback)
    assert d.live and "cold" not in d.reason
