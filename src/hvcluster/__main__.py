"""``python -m hvcluster``: the same as the ``hvc`` command."""

from hvcluster.entry import app

app(prog_name="hvc")
