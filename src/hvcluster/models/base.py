"""The base of every stored model: frozen, strict about unknown fields, finite numbers, JSON in
the store."""

from __future__ import annotations

from typing import TypeVar

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


def decode(cls: type[M], key: str, raw: bytes) -> M:
    """Decode a stored value; anything wrong becomes :class:`CorruptValue` naming the key."""
    try:
        return cls.model_validate_json(raw)
    except ValidationError as e:
        raise CorruptValue(key, describe(e)) from e
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptValue(key, str(e)) from e
