"""The node watchdog (:mod:`hvcluster.watchdog.node`): a separate process per node that kills
every VM of the node when its agent stops feeding it, and the agent's feeder for it.

It must keep working when the agent is frozen or dead, so it depends on as little as
possible: no etcd, no asyncio, nothing of ours but the runtime dirs it reads pids from
(an import-linter contract keeps it so).
"""
