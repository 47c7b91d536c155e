"""The base of every stored model: frozen, strict about unknown fields, finite numbers, JSON in
the store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from hvcluster.models.errors import CorruptValue, InvalidInput


class Model(BaseModel):
    # allow_inf_nan=False: JSON numbers such as 1e999 parse as infinity, which pydantic would
    # accept and then store as null (JSON has no infinity); a stored model's numbers are finite.
    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False
    )


M = TypeVar("M", bound=Model)


def describe(error: ValidationError) -> str:
    """One line per problem, each naming its field: ``vcpus: Input should be greater than 0``."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(value)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def first_field(error: ValidationError) -> str | None:
    errors = error.errors()
    return ".".join(str(p) for p in errors[0]["loc"]) if errors and errors[0]["loc"] else None


def parse(cls: type[M], data: object) -> M:
    """Validate user input (a dict) into ``cls``; raise :class:`InvalidInput` naming the field."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise InvalidInput(describe(e), field=None) from e


def encode(model: Model) -> bytes:
    return model.model_dump_json().encode()


# While a :func:`remembering_decodes` block runs: values decoded, by their class and bytes.
_remembered: dict[tuple[type[Model], bytes], Model] | None = None
REMEMBER_AT_MOST = 4096


@contextmanager
def remembering_decodes() -> Iterator[None]:
    """Within the block, :func:`decode` gives the value it gave before for the same class
    and bytes instead of decoding them again (models are frozen: the same value). A
    simulated cluster's daemons decode the same few records thousands of times a run (each
    follower reads every node twice a second): most of a run's CPU, for nothing. At most
    :data:`REMEMBER_AT_MOST` values are kept (all forgotten when full); corrupt values are
    never kept."""
    global _remembered
    before, _remembered = _remembered, {}
    try:
        yield
    finally:
        _remembered = before


def decode(cls: type[M], key: str, raw: bytes) -> M:
    """Decode a stored value; anything wrong becomes :class:`CorruptValue` naming the key."""
    memo = _remembered
    if memo is not None and type(raw) is bytes:
        found = memo.get((cls, raw))
        if found is not None:
            return cast(M, found)
    try:
        value = cls.model_validate_json(raw)
    except ValidationError as e:
        raise CorruptValue(key, describe(e)) from e
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptValue(key, str(e)) from e
    if memo is not None and type(raw) is bytes:
        if len(memo) >= REMEMBER_AT_MOST:
            memo.clear()
        memo[(cls, raw)] = value
    return value
