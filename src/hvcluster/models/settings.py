"""Changing some fields of a stored model by dotted keys (``migration.downtime_limit_ms``,
``ha.priority``): how ``PATCH /cluster/config`` and ``PATCH /vms/{name}`` take an admin's
edits, and how the CLI's ``KEY=VALUE`` and ``--memory`` options reach them.

One shape for every edit: the keys an object lets be changed are listed by its owner (the
cluster config's, a VM's), each value is put into the stored object's dump and the whole
is validated by the model again, so a cross-field rule (a TTL not above ``fence_after``)
refuses the edit as it refuses a stored value, naming the field.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from hvcluster.models.base import Model
from hvcluster.models.errors import InvalidInput

M = TypeVar("M", bound=Model)

SETTINGS_MAX = 64  # keys in one edit
KEY_MAX = 100


def dotted_fields(cls: type[Model], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf field of ``cls`` as ``(dotted key, annotation)``, nested models walked."""
    for name, info in cls.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Model):
            yield from dotted_fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", annotation


def is_list_field(annotation: Any) -> bool:
    """Does a field hold a list (a tuple of names, of directories)? The CLI splits such a
    ``KEY=a,b`` on commas."""
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) in (tuple, list):
            return True
    return False


def is_text_field(annotation: Any) -> bool:
    """Is a field plain text (``fence_command``)? The CLI sends such a value as it was
    typed, never parsed as JSON (``true`` stays the word)."""
    if annotation is str:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return is_text_field(typing.get_args(annotation)[0])
    if origin in (types.UnionType, typing.Union):
        return all(a is str or a is type(None) for a in typing.get_args(annotation))
    return False


def typed_value(annotation: Any, text: str) -> Any:
    """A ``KEY=VALUE``'s value as the API takes it for a field of ``annotation``: a list
    field's split on commas (empty: none), a text field's as typed, any other parsed as JSON
    when it is (numbers, true/false) and left as text when not (``drain_fallback=stay``):
    the API validates it."""
    if is_list_field(annotation):
        return [v.strip() for v in text.split(",") if v.strip()]
    if is_text_field(annotation):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Change:
    key: str
    before: Any
    after: Any

    def describe(self) -> str:
        return f"{self.key} {_show(self.before)} -> {_show(self.after)}"


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def _get(data: Mapping[str, Any], key: str) -> Any:
    value: Any = data
    for part in key.split("."):
        value = value[part]
    return value


def apply_settings(model: M, settings: Mapping[str, Any], settable: Collection[str]) -> M:
    """``model`` with each dotted key of ``settings`` set, validated as a whole by its
    class. An unknown key, one not settable, or a value the model refuses is
    :class:`InvalidInput` naming the key."""
    if len(settings) > SETTINGS_MAX:
        raise InvalidInput(f"at most {SETTINGS_MAX} settings at once", field="settings")
    data = model.model_dump(mode="json")
    for key, value in settings.items():
        if key not in settable:
            known = ", ".join(sorted(settable))
            raise InvalidInput(f"not a setting that can be changed (settable: {known})", key)
        *parents, leaf = key.split(".")
        holder = data
        for part in parents:
            holder = holder[part]
        holder[leaf] = value
    try:
        return type(model).model_validate(data)
    except ValidationError as e:
        raise refused(e, settings) from None


def refused(error: ValidationError, settings: Mapping[str, Any]) -> InvalidInput:
    """The refusal of an edit: each problem with its dotted field; a cross-field rule (no
    field of its own) is named after the key edited, if only one was."""
    parts: list[str] = []
    first: str | None = None
    for item in error.errors()[:10]:
        where = ".".join(str(p) for p in item["loc"])
        msg = str(item["msg"]).removeprefix("Value error, ")
        if where and where not in settings:
            # a nested model's own rule: loc is the nested model ("ha.failback")
            matching = [k for k in settings if k.startswith(where + ".")]
            where = matching[0] if len(matching) == 1 else where
        if not where and len(settings) == 1:
            where = next(iter(settings))
        first = first or where or None
        parts.append(f"{where}: {msg}" if where else msg)
    problem = InvalidInput("; ".join(parts))
    problem.field = first  # the message names every field already
    return problem


def changes(before: Model, after: Model, keys: Collection[str]) -> list[Change]:
    """The dotted keys whose values differ, with both values (as JSON values)."""
    old, new = before.model_dump(mode="json"), after.model_dump(mode="json")
    found = []
    for key in sorted(keys):
        a, b = _get(old, key), _get(new, key)
        if a != b:
            found.append(Change(key, a, b))
    return found
