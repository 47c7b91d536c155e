"""``python -m hvcluster.agent --config FILE``: the agent, quick to start (agent/start.py)."""

from hvcluster.agent.start import main

main()
