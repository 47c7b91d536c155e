"""Which named CPU models can this host give guests? Asked of QEMU itself.

QEMU is started without a machine (``-machine none``) under the accelerator the node uses,
with QMP on stdin/stdout; ``query-cpu-definitions`` lists every model it knows and, for
each, the features this host (under that accelerator) cannot provide. A model QEMU does not
know, or one with unavailable features, is a problem: a guest given it would not start, or
not as that model. The answer is kept per binary and accelerator for the life of the
process (an agent asks once per start).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

QUERY = (
    '{"execute": "qmp_capabilities"}\n{"execute": "query-cpu-definitions"}\n{"execute": "quit"}\n'
)
MOST_SHOWN = 8
_NONE: frozenset[str] = frozenset()


class CpuModels:
    """QEMU's CPU models on this host: name -> the features it lacks here; or why unknown."""

    def __init__(
        self, models: dict[str, list[str]] | None, error: str = "", unsafe: frozenset[str] = _NONE
    ) -> None:
        self.models = models or {}
        self.error = error
        self.unsafe = unsafe  # models QEMU says are not migration-safe (max, host)

    @property
    def provided(self) -> tuple[str, ...]:
        """The models this host gives guests in full and that migrate (QEMU's
        ``migration-safe``: not ``max`` nor ``host``, which mean other CPUs elsewhere)."""
        return tuple(
            sorted(m for m, missing in self.models.items() if not missing and m not in self.unsafe)
        )

    def problem(self, binary: str, model: str, accelerator: str) -> str:
        """Why this host cannot give guests ``model``; "" if it can."""
        if self.error:
            return self.error
        if model not in self.models:
            return f"QEMU ({binary}) knows no CPU model {model!r}"
        missing = self.models[model]
        if missing:
            shown = ", ".join(missing[:MOST_SHOWN])
            more = f" and {len(missing) - MOST_SHOWN} more" if len(missing) > MOST_SHOWN else ""
            return f"this host cannot provide {model} under {accelerator}: it lacks {shown}{more}"
        return ""


_KNOWN: dict[tuple[str, str], CpuModels] = {}


def cpu_models(binary: str, accelerator: str, timeout: float = 15.0) -> CpuModels:
    """QEMU's answer, asked once per binary and accelerator in this process (a failure is
    not kept: the next call asks again)."""
    known = _KNOWN.get((binary, accelerator))
    if known is None:
        known = _ask(binary, accelerator, timeout)
        if not known.error:
            _KNOWN[(binary, accelerator)] = known
    return known


def _ask(binary: str, accelerator: str, timeout: float) -> CpuModels:
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
        return CpuModels(None, f"{binary} not found")
    except subprocess.TimeoutExpired:
        return CpuModels(None, f"{binary} did not list its CPU models in {timeout:.0f} s")
    found = _definitions(done.stdout)
    if found is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no answer"]
        return CpuModels(None, f"{binary} did not list its CPU models ({tail[0][:200]})")
    models = {
        str(m.get("name")): [str(f) for f in m.get("unavailable-features") or []] for m in found
    }
    unsafe = frozenset(str(m.get("name")) for m in found if m.get("migration-safe") is False)
    return CpuModels(models, unsafe=unsafe)


def guest_cpu_problem(binary: str, model: str, accelerator: str, timeout: float = 15.0) -> str:
    """Why this host cannot give guests CPU ``model`` under ``accelerator``; "" if it can."""
    return cpu_models(binary, accelerator, timeout).problem(binary, model, accelerator)


def _definitions(stdout: str) -> list[dict[str, Any]] | None:
    """QEMU's CPU definitions, from QMP's answers; None without that answer."""
    for line in stdout.splitlines():
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        found = answer.get("return") if isinstance(answer, dict) else None
        if isinstance(found, list):
            return [m for m in found if isinstance(m, dict)]
    return None
