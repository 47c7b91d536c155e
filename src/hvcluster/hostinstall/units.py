"""The systemd units of a host, rendered from its :class:`~hvcluster.hostinstall.plan.HostPlan`.

Why each setting is there matters more than the setting, so the units say it in comments:
an admin reading ``systemctl cat hvc-agent`` should not need this file.
"""

from __future__ import annotations

from hvcluster.host.etcd_unit import ETCD_UNIT as ETCD_UNIT  # cluster init starts it too
from hvcluster.hostinstall.plan import ETCD_DATA_DIR, HostPlan

WATCHDOG_UNIT = "hvc-watchdog.service"
AGENT_UNIT = "hvc-agent.service"


def watchdog_unit(plan: HostPlan) -> str:
    hardware = f" --hardware {plan.hardware_watchdog}" if plan.hardware_watchdog else ""
    softdog = (
        "# The kernel's software watchdog provides /dev/watchdog where no hardware one does.\n"
        "ExecStartPre=-/sbin/modprobe softdog\n"
        if plan.softdog
        else ""
    )
    return f"""\
# Installed by hvc host install; rewritten by the next install (edit with systemctl edit).
[Unit]
Description=hvcluster node watchdog: kills this host's VMs when its agent stops feeding it
Before={AGENT_UNIT}
StartLimitIntervalSec=0

[Service]
Type=simple
{softdog}# python -m: no Typer, no asyncio, no etcd client; starts fast and depends on little.
# --fence-after is only the grace after its own start: the agent feeds absolute deadlines.
ExecStart={plan.prefix}/bin/python -m hvcluster.watchdog --run-dir {plan.run_dir} \
--fence-after {plan.fence_after_s}{hardware}
Restart=always
RestartSec=1
# It must outlive everything on a host short of memory: it is what fences the VMs.
OOMScoreAdjust=-1000
Nice=-10

[Install]
WantedBy=multi-user.target
"""


def agent_unit(plan: HostPlan) -> str:
    etcd_after = f" {ETCD_UNIT}" if plan.etcd_member else ""
    etcd_wants = f"Wants={ETCD_UNIT}\n" if plan.etcd_member else ""
    return f"""\
# Installed by hvc host install; rewritten by the next install (edit with systemctl edit).
[Unit]
Description=hvcluster agent: node agent, controller candidate and API
# No agent without its watchdog: an agent whose feeds go unanswered starts no VM.
Requires={WATCHDOG_UNIT}
After={WATCHDOG_UNIT} network-online.target remote-fs.target{etcd_after}
Wants=network-online.target
{etcd_wants}# Never give up restarting: an agent that stays down is fenced by its watchdog anyway.
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart={plan.prefix}/bin/python -m hvcluster.agent --config {plan.config_path}
# Restarted within fence_after (3 s by default), the agent adopts its lease and re-attaches
# to its VMs; later, the watchdog has killed them and the cluster restarts them elsewhere.
Restart=always
RestartSec=1
# Each QEMU runs in a scope of its own (systemd-run --scope, machine.slice), outside this
# unit's control group. KillMode=process still stops only the agent, should a QEMU be here
# after all (an agent told scope = none): stopping or restarting it never stops a VM.
KillMode=process
TimeoutStopSec=30
# A guest killed by the OOM killer is the agent's business to report, not a reason to stop
# the unit (the default policy, stop, would take the agent down with it).
OOMPolicy=continue
# No task, memory or CPU limit on this unit (a QEMU started without a scope counts here).
TasksMax=infinity
LimitNOFILE=1048576
LimitMEMLOCK=infinity

[Install]
WantedBy=multi-user.target
"""


def etcd_unit(plan: HostPlan) -> str:
    return f"""\
# Installed by hvc host install --etcd-member; rewritten by the next install.
[Unit]
Description=etcd member of the hvcluster store
After=network-online.target
Wants=network-online.target
Before={AGENT_UNIT}
StartLimitIntervalSec=0
# The member's name, URLs, cluster and certificates: one flag a line, as hvc cluster init,
# hvc node join and hvc host install --etcd-member write them.
ConditionPathExists={plan.etcd_flags_path}

[Service]
Type=notify
# As root, like the agent: it reads the node's key, which the agent holds anyway.
# {ETCD_DATA_DIR} (the flags' --data-dir), made by systemd if missing.
StateDirectory=hvcluster/etcd
StateDirectoryMode=0700
# exec: etcd itself is the main process (Type=notify); one flag a line, no globbing.
ExecStart=/bin/sh -c 'set -f; exec /usr/bin/etcd $$(grep -v "^#" {plan.etcd_flags_path})'
Restart=always
RestartSec=2
LimitNOFILE=65536
# etcd's latency is the cluster's heartbeat: first in line for the disk.
IOSchedulingClass=best-effort
IOSchedulingPriority=0
Nice=-10

[Install]
WantedBy=multi-user.target
"""


def units(plan: HostPlan) -> dict[str, str]:
    """Every unit this host gets, by file name."""
    found = {WATCHDOG_UNIT: watchdog_unit(plan), AGENT_UNIT: agent_unit(plan)}
    if plan.etcd_member:
        found[ETCD_UNIT] = etcd_unit(plan)
    return found
