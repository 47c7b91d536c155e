"""``/api/v1/cluster/config``: read the cluster settings, and change them (admin: writes under
``/cluster`` need it, api/auth.py).

A change names dotted keys (``{"settings": {"migration.downtime_limit_ms": 500}}``); the
result is validated whole by :class:`ClusterConfig` and by the rules a new config must keep
(:func:`hvcluster.models.config.safety_problems`), each refusal naming the field and why.

Two admins never overwrite each other unseen: a change may name the ``revision`` it was
decided on (what ``GET`` answered) and is then refused with 409 if the config changed since;
without one it applies to the config as stored when it commits (compare-and-set, retried).
Every change is an event (``cluster.config_changed``) naming who changed which key from what
to what, and saying which need each agent to restart (:data:`RESTART_NEEDED`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import Field, StrictBool, StrictFloat, StrictInt

from hvcluster.api.context import ApiContext, Ctx
from hvcluster.api.views import View
from hvcluster.api.writes import ATTEMPTS
from hvcluster.models.base import Model, decode, encode
from hvcluster.models.config import (
    RESTART_NEEDED,
    ClusterConfig,
    safety_problems,
    settable_keys,
)
from hvcluster.models.errors import Conflict, CorruptValue, InvalidInput
from hvcluster.models.names import PATH_MAX
from hvcluster.models.settings import KEY_MAX, SETTINGS_MAX, Change, apply_settings, changes
from hvcluster.store.base import Compare, Put

router = APIRouter(prefix="/cluster/config", tags=["cluster"])

SettingValue = StrictBool | StrictInt | StrictFloat | str | list[str]
SettingKey = Annotated[str, Field(max_length=KEY_MAX)]


class SettingsChange(Model):
    """A change of some settings, by dotted key. ``revision``: the config's revision it was
    decided on (409 if it changed since); omitted: whatever is stored when it commits."""

    settings: dict[SettingKey, SettingValue] = Field(min_length=1, max_length=SETTINGS_MAX)
    revision: int | None = Field(default=None, ge=0)
    reason: str = Field(default="", max_length=PATH_MAX)


class SettingChanged(View):
    key: str
    before: Any
    after: Any
    restart_needed: bool


class ConfigView(View):
    """The settings in force. ``revision``: the stored config's mod revision, 0 when none is
    stored (the defaults); a change may name it to be refused if another came first."""

    config: ClusterConfig
    revision: int
    stored: bool
    profile: str | None  # the timing profile whose timings these are, if any
    restart_needed: list[str]  # keys an agent reads only when it starts


class ConfigChanged(ConfigView):
    changes: list[SettingChanged]


async def _read(ctx: ApiContext) -> tuple[ClusterConfig, int, str | None]:
    """The stored config and its mod revision (0: none stored, the defaults); a corrupt one
    reads as the defaults (with why), so that an admin can replace it."""
    kv = await ctx.store.get(ctx.keys.config)
    if kv is None:
        return ClusterConfig(name=ctx.keys.cluster), 0, None
    try:
        return decode(ClusterConfig, kv.key, kv.value), kv.mod_revision, None
    except CorruptValue as e:
        ctx.corrupt.report_soon(e)
        return ClusterConfig(name=ctx.keys.cluster), kv.mod_revision, e.reason


def _view(config: ClusterConfig, revision: int) -> ConfigView:
    return ConfigView(
        config=config,
        revision=revision,
        stored=revision > 0,
        profile=config.profile(),
        restart_needed=sorted(RESTART_NEEDED),
    )


@router.get("", response_model=ConfigView)
async def show_config(ctx: Ctx) -> ConfigView:
    config, revision, _ = await _read(ctx)
    return _view(config, revision)


def _checked(current: ClusterConfig, change: SettingsChange) -> ClusterConfig:
    new = apply_settings(current, change.settings, settable_keys())
    problems = safety_problems(new)
    if problems:
        field = problems[0][0]
        raise InvalidInput("; ".join(why for _, why in problems), field=field)
    return new


@router.patch("", response_model=ConfigChanged)
async def change_config(change: SettingsChange, ctx: Ctx) -> ConfigChanged:
    """Set some settings; answer the config now, and what changed from what to what."""
    key = ctx.keys.config
    for _ in range(ATTEMPTS):
        current, revision, corrupt = await _read(ctx)
        if change.revision is not None and change.revision != revision:
            raise Conflict(
                f"the cluster config changed since revision {change.revision} (it is at "
                f"revision {revision} now): read it again ('hvc cluster config show') and "
                "decide again"
            )
        new = _checked(current, change)
        done = changes(current, new, settable_keys())
        if not done and corrupt is None:
            return ConfigChanged(**dict(_view(current, revision)), changes=[])
        guard = Compare.mod_is(key, revision) if revision else Compare.absent(key)
        result = await ctx.store.txn([guard], [Put(key, encode(new))])
        if result.succeeded:
            await _record(ctx, done, result.revision, change.reason, corrupt)
            shown = [
                SettingChanged(
                    key=c.key,
                    before=c.before,
                    after=c.after,
                    restart_needed=c.key in RESTART_NEEDED,
                )
                for c in done
            ]
            return ConfigChanged(**dict(_view(new, result.revision)), changes=shown)
        # lost the compare: read again (with a revision named, the read says who won)
    raise Conflict(f"the cluster config kept changing under us ({ATTEMPTS} attempts); try again")


def restart_note(done: list[Change]) -> str:
    """What a change of timings means for the agents, or ""."""
    keys = [c.key for c in done if c.key in RESTART_NEEDED]
    if not keys:
        return ""
    return (
        f"{', '.join(keys)}: each agent uses the new value once it restarts (its lease and "
        "watchdog run on what it read at start); the controller waits as long as either needs"
    )


async def _record(
    ctx: ApiContext, done: list[Change], revision: int, reason: str, corrupt: str | None
) -> None:
    said = "; ".join(c.describe() for c in done) or "nothing changed"
    text = f"cluster config changed: {said}"
    if corrupt is not None:
        text += f" (the stored config did not decode, so the defaults were changed: {corrupt})"
    note = restart_note(done)
    if note:
        text += f". {note}"
    if reason:
        text += f". Reason: {reason}"
    data: dict[str, str | int | float | bool | None] = {"revision": revision}
    for c in done:
        data[f"{c.key}.before"] = _scalar(c.before)
        data[f"{c.key}.after"] = _scalar(c.after)
    await ctx.record("cluster.config_changed", "cluster/config", text, data)


def _scalar(value: Any) -> str | int | float | bool | None:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return ",".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
