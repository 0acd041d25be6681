"""Typed JSON: values are encoded with the types a function declares and decoded back
to those types, so a step returning a pydantic model returns that model on replay too.

Pydantic does the work: models, dataclasses, datetime, date, UUID, Decimal, bytes
(base64), Enum, tuples and containers of them. No pickle, anywhere. What cannot be
encoded is refused with a :class:`~pyworkflow.errors.SerializationError` naming the
function and the argument.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from pyworkflow.errors import SerializationError

_CONFIG = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")
_PLAIN = (str, int, float, bool, type(None))
_PLAIN_TYPES = frozenset(_PLAIN)
_ANY: Any = Any
_UNSET: Any = object()
_NO_KWARGS: dict[str, Any] = {}


class _Codec:
    """One annotation's adapter. The annotation is wrapped in a 1-tuple because pydantic
    refuses ``config=`` for a bare dataclass; wrapped, stdlib dataclasses (and containers)
    inherit our config, so their bytes are base64. Pydantic models keep their own config."""

    __slots__ = ("_adapter",)

    def __init__(self, annotation: Any) -> None:
        self._adapter = TypeAdapter(tuple[annotation], config=_CONFIG)

    def dump(self, value: Any) -> Any:
        return self._adapter.dump_python((value,), mode="json", warnings="error")[0]

    def load(self, data: Any) -> Any:
        return self._adapter.validate_python((data,))[0]


@lru_cache(maxsize=4096)
def _codec(annotation: Any) -> _Codec:
    return _Codec(annotation)


def encode(value: Any, annotation: Any = _ANY, *, what: str = "value") -> Any:
    """``value`` as JSON-compatible data, according to ``annotation``."""
    if type(value) in _PLAIN and (annotation is _ANY or annotation is type(value)):
        return value
    try:
        try:
            return _codec(annotation).dump(value)
        except PydanticSerializationError:
            if annotation is _ANY:
                raise
            # The value is not of the declared type (a dict for a model, say): encode it
            # as what it is; decoding validates it into the declared type.
            return _codec(_ANY).dump(value)
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        raise SerializationError(
            f"{what} of type {type(value).__name__} cannot be encoded as JSON: {exc}. "
            "Use JSON types, pydantic models, dataclasses, datetime, UUID, Decimal, bytes or Enum."
        ) from None


def decode(data: Any, annotation: Any = _ANY, *, what: str = "value") -> Any:
    """Data written by :func:`encode` back as ``annotation``."""
    if annotation is _ANY or (type(data) is annotation and annotation in _PLAIN):
        return data
    try:
        return _codec(annotation).load(data)
    except ValidationError as exc:
        raise SerializationError(f"{what} cannot be decoded as {annotation!r}: {exc}") from None


class Signature:
    """Encodes and decodes one function's arguments and result with its type hints."""

    def __init__(self, fn: Callable[..., Any], qualname: str) -> None:
        self.name = qualname
        self._fn = fn
        self._sig = inspect.signature(fn)
        self._hints: dict[str, Any] | None = None
        self._positional_hints: list[tuple[str, Any]] | None = None
        self._plain_hints: tuple[Any, ...] | None = _UNSET
        self._return: Any = _UNSET
        self._params = list(self._sig.parameters.values())
        self._positional = [p for p in self._params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self._var_positional = next((p for p in self._params if p.kind is p.VAR_POSITIONAL), None)
        self._var_keyword = next((p for p in self._params if p.kind is p.VAR_KEYWORD), None)
        # Calls with exactly the required positional arguments need no full bind.
        self._plain_arity = (
            len(self._params)
            if all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in self._params)
            else -1
        )

    def _hint(self, name: str) -> Any:
        if self._hints is None:
            try:
                hints = typing.get_type_hints(self._fn)
            except Exception:  # noqa: BLE001 - unresolvable forward refs: fall back to untyped
                hints = {}
            self._hints = {k: (_ANY if v is inspect.Parameter.empty else v) for k, v in hints.items()}
        return self._hints.get(name, _ANY)

    def _positional_hint(self, index: int) -> tuple[str, Any]:
        if self._positional_hints is None:
            self._positional_hints = [(p.name, self._hint(p.name)) for p in self._positional]
        if index < len(self._positional_hints):
            return self._positional_hints[index]
        if self._var_positional is not None:
            return f"*{self._var_positional.name}[{index - len(self._positional)}]", self._hint(
                self._var_positional.name
            )
        return f"#{index}", _ANY

    def _keyword_hint(self, key: str) -> Any:
        param = self._sig.parameters.get(key)
        if param is not None and param.kind is not param.VAR_POSITIONAL:
            return self._hint(key)
        return self._hint(self._var_keyword.name) if self._var_keyword is not None else _ANY

    def _plain_args(self, args: tuple[Any, ...] | list[Any]) -> bool:
        """Whether ``args`` (positional only, exactly the required ones) are plain JSON
        scalars (str, int, float, bool, None) of exactly their declared types (or of a
        parameter without a hint). For those, encoding and decoding are the identity,
        so the codec can be skipped without changing a single value."""
        hints = self._plain_hints
        if hints is _UNSET:
            hints = self._plain_hints = self._find_plain_hints()
        if hints is None or len(args) != len(hints):
            return False
        for value, hint in zip(args, hints, strict=True):
            kind = type(value)
            if kind is not hint and (hint is not _ANY or kind not in _PLAIN_TYPES):
                return False
        return True

    def _find_plain_hints(self) -> tuple[Any, ...] | None:
        if self._plain_arity < 0:
            return None
        hints = tuple(self._hint(p.name) for p in self._params)
        return hints if all(h is _ANY or h in _PLAIN_TYPES for h in hints) else None

    def check_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise ``TypeError`` naming the function when the arguments do not fit it."""
        if not kwargs and len(args) == self._plain_arity:
            return
        try:
            self._sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}(): {exc}") from None

    def encode_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if not kwargs and self._plain_args(args):
            return {"args": list(args), "kwargs": {}}
        out_args = []
        for i, value in enumerate(args):
            name, hint = self._positional_hint(i)
            out_args.append(encode(value, hint, what=f"{self.name}(): argument {name!r}"))
        out_kwargs = {
            key: encode(value, self._keyword_hint(key), what=f"{self.name}(): argument {key!r}")
            for key, value in kwargs.items()
        }
        return {"args": out_args, "kwargs": out_kwargs}

    def decode_args(self, data: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        raw, named = data.get("args", ()), data.get("kwargs", _NO_KWARGS)
        if type(raw) is list and type(named) is dict and not named and self._plain_args(raw):
            return tuple(raw), {}
        args = tuple(self._decode_positional(i, value) for i, value in enumerate(data.get("args", ())))
        kwargs = {
            key: decode(value, self._keyword_hint(key), what=f"{self.name}(): argument {key!r}")
            for key, value in data.get("kwargs", {}).items()
        }
        return args, kwargs

    def _decode_positional(self, index: int, value: Any) -> Any:
        name, hint = self._positional_hint(index)
        return decode(value, hint, what=f"{self.name}(): argument {name!r}")

    def encode_args_for_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], tuple[Any, ...], dict[str, Any]]:
        """The encoded arguments, and the arguments a call receives: decoded back from
        that encoding, so a first run sees exactly what a replay would (the identity for
        plain JSON scalars of their declared types, which skip the round trip)."""
        if not kwargs and self._plain_args(args):
            return {"args": list(args), "kwargs": {}}, args, kwargs
        payload = self.encode_args(args, kwargs)
        args, kwargs = self.decode_args(payload)
        return payload, args, kwargs

    def _return_hint(self) -> Any:
        hint = self._return
        if hint is _UNSET:
            hint = self._return = self._hint("return")
        return hint

    def encode_result(self, value: Any) -> Any:
        hint = self._return if self._return is not _UNSET else self._return_hint()
        kind = type(value)
        if kind in _PLAIN_TYPES and (hint is _ANY or hint is kind):
            return value
        return encode(value, hint, what=f"{self.name}(): return value")

    def decode_result(self, data: Any) -> Any:
        hint = self._return if self._return is not _UNSET else self._return_hint()
        if hint is _ANY or (type(data) is hint and hint in _PLAIN_TYPES):
            return data
        return decode(data, hint, what=f"{self.name}(): return value")
