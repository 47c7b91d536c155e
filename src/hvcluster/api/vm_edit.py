"""``PATCH /api/v1/vms/{name}``: change a VM's spec by dotted key (``{"settings":
{"memory_mib": 512, "ha.priority": "high"}, "revision": 42}``), operator role.

What can be changed is what an admin tunes (:data:`SETTABLE`): size, CPU model, boot,
recovery policy. Not its name or uid (they identify it), its disks and NICs (storage moves
and a future device edit own those: files and locks follow them) nor its desired state
(``start``/``stop``). The result is validated whole by :class:`VMSpec`, and a kernel or
initrd by the cluster's ``allowed_disk_dirs`` as at creation.

Compare-and-set on the spec's mod revision: an edit naming ``revision`` (``spec_revision``
of ``GET /vms/{name}``) is refused with 409, naming the revision now, if the spec changed
since; without one it applies to the spec as stored when it commits.

A running VM keeps the size and CPU model it was started with: those changes
(:data:`RESTART_NEEDED`) take effect when it next starts cold (stop and start, or a
failover). Until then a live or quick migration keeps them: its source writes the size the
guest runs with into the record and the target builds the incoming VM from that (see
:class:`hvcluster.models.migration.RunningSize`). The answer and the event say which wait.
"""

from __future__ import annotations

from fastapi import APIRouter

from hvcluster.api.cluster_config import SettingChanged, SettingsChange
from hvcluster.api.context import Ctx, ValidName
from hvcluster.api.reads import decode_one
from hvcluster.api.views import VMView
from hvcluster.api.vms import check_disk_dirs, load_vm
from hvcluster.api.writes import ATTEMPTS
from hvcluster.models.base import encode
from hvcluster.models.errors import Conflict, NotFound
from hvcluster.models.lifecycle import VMState
from hvcluster.models.settings import apply_settings, changes, dotted_fields
from hvcluster.models.vm import VMSpec
from hvcluster.store.base import Compare, Put

router = APIRouter(prefix="/vms", tags=["vms"])

# monitor: its devices are on the command line, which both ends of a live migration share.
FIXED = frozenset({"name", "uid", "disks", "nics", "desired_state", "labels", "monitor"})
SETTABLE = frozenset(k for k, _ in dotted_fields(VMSpec) if k.split(".")[0] not in FIXED)
RESTART_NEEDED = frozenset(
    {"vcpus", "memory_mib", "cpu_model", "boot.kernel", "boot.initrd", "boot.cmdline"}
)


class VMChanged(VMView):
    changes: list[SettingChanged]
    # Changed settings the VM, running now, takes only at its next cold start.
    restart_needed: list[str]


@router.patch("/{name}", response_model=VMChanged)
async def edit_vm(name: ValidName, change: SettingsChange, ctx: Ctx) -> VMChanged:
    key, what = ctx.keys.vm(name), f"vm {name!r}"
    for _ in range(ATTEMPTS):
        kv = await ctx.store.get(key)
        if kv is None:
            raise NotFound(f"{what} not found")
        if change.revision is not None and change.revision != kv.mod_revision:
            raise Conflict(
                f"{what} changed since revision {change.revision} (its spec is at revision "
                f"{kv.mod_revision} now): show it again ('hvc vm show {name}') and decide again"
            )
        current = await decode_one(VMSpec, kv, ctx.corrupt)
        new = apply_settings(current, change.settings, SETTABLE)
        if new.boot != current.boot:
            await check_disk_dirs(ctx, new)
        done = changes(current, new, SETTABLE)
        if not done:
            shown = await load_vm(ctx, name, [])
            return VMChanged(**dict(shown), changes=[], restart_needed=[])
        result = await ctx.store.txn(
            [Compare.mod_is(key, kv.mod_revision)], [Put(key, encode(new))]
        )
        if not result.succeeded:
            continue  # read again: with a revision named, that says who came first
        shown = await load_vm(ctx, name, [])
        running = shown.state not in (VMState.STOPPED, VMState.FAILED, VMState.PENDING)
        later = [c.key for c in done if c.key in RESTART_NEEDED] if running else []
        text = f"vm {name} changed: " + "; ".join(c.describe() for c in done)
        if later:
            text += (
                f". It runs on with its old {', '.join(later)} until its next cold start "
                "(stop and start it, or a failover); live and quick moves keep them meanwhile"
            )
        if change.reason:
            text += f". Reason: {change.reason}"
        await ctx.record("vm.changed", f"vm/{name}", text, {"revision": result.revision})
        listed = [
            SettingChanged(key=c.key, before=c.before, after=c.after, restart_needed=c.key in later)
            for c in done
        ]
        return VMChanged(**dict(shown), changes=listed, restart_needed=later)
    raise Conflict(f"{what} kept changing under us ({ATTEMPTS} attempts); try again")
