"""Can this host give guests a named CPU model? Asked of QEMU itself.

QEMU is started without a machine (``-machine none``) under the accelerator the node uses,
with QMP on stdin/stdout; ``query-cpu-definitions`` lists every model it knows and, for
each, the features this host (under that accelerator) cannot provide. A model QEMU does not
know, or one with unavailable features, is a problem: a guest given it would not start, or
not as that model.
"""

from __future__ import annotations

import json
import subprocess

QUERY = (
    '{"execute": "qmp_capabilities"}\n{"execute": "query-cpu-definitions"}\n{"execute": "quit"}\n'
)
MOST_SHOWN = 8


def guest_cpu_problem(binary: str, model: str, accelerator: str, timeout: float = 15.0) -> str:
    """Why this host cannot give guests CPU ``model`` under ``accelerator``; "" if it can."""
    command = [
        binary,
        *("-machine", "none", "-accel", accelerator),
        *("-nodefaults", "-nographic", "-display", "none", "-qmp", "stdio"),
    ]
    try:
        done = subprocess.run(
            command, input=QUERY, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        return f"{binary} not found"
    except subprocess.TimeoutExpired:
        return f"{binary} did not list its CPU models in {timeout:.0f} s"
    models = _models(done.stdout)
    if models is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no answer"]
        return f"{binary} did not list its CPU models ({tail[0][:200]})"
    if model not in models:
        return f"QEMU ({binary}) knows no CPU model {model!r}"
    missing = models[model]
    if missing:
        shown = ", ".join(missing[:MOST_SHOWN])
        more = f" and {len(missing) - MOST_SHOWN} more" if len(missing) > MOST_SHOWN else ""
        return f"this host cannot provide {model} under {accelerator}: it lacks {shown}{more}"
    return ""


def _models(stdout: str) -> dict[str, list[str]] | None:
    """Model name -> its unavailable features, from QMP's answers; None without that answer."""
    for line in stdout.splitlines():
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        found = answer.get("return") if isinstance(answer, dict) else None
        if isinstance(found, list):
            return {
                str(m.get("name")): [str(f) for f in m.get("unavailable-features") or []]
                for m in found
                if isinstance(m, dict)
            }
    return None
