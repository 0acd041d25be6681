"""Typed JSON: values are encoded with the types a function declares and decoded back
to those types, so a step returning a pydantic model returns that model on replay too.

Pydantic does the work: models, dataclasses, datetime, date, UUID, Decimal, bytes
(base64), Enum, tuples and containers of them. No pickle, anywhere. What cannot be
encoded is refused with a :class:`~pyworkflow.errors.SerializationError` naming the
function and the argument.

**The value policy**, the same on every backend (PostgreSQL's text and jsonb set the
bar): a value is refused where it enters (workflow arguments at ``start()``, step
arguments at the step call, results when they are recorded, message payloads at
``post_message``, idempotency keys at ``start()``) when it holds

* a float that is not finite (``nan``, ``inf``, ``-inf``): JSON has no such number;
* a string with a NUL character (``"\\x00"``) or a lone surrogate (``"\\ud800"``):
  they have no UTF-8 form that PostgreSQL (or any JSON reader) accepts;
* an idempotency key longer than :data:`MAX_KEY_LENGTH` characters.

A result that cannot be read back as its function's return annotation (a step
declared ``-> dict`` returning ``None``) is refused before it is recorded, too.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from pyworkflow.errors import SerializationError

# ``ser_json_inf_nan="constants"``: a NaN under ``Any`` stays NaN (pydantic's default
# turns it into ``None``, silently), so the value policy sees it and refuses it.
_CONFIG = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64", ser_json_inf_nan="constants")
_PLAIN = (str, int, float, bool, type(None))
_PLAIN_TYPES = frozenset(_PLAIN)
_ANY: Any = Any
_UNSET: Any = object()
_NO_KWARGS: dict[str, Any] = {}


# -- the value policy --------------------------------------------------------------------

#: The longest idempotency key accepted, in characters (keys are indexed by every backend;
#: PostgreSQL's index refuses rows over ~2.7 kB).
MAX_KEY_LENGTH = 255

_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")
_STRICT_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))  # json.dumps(allow_nan=False)
_RULE = "finite floats only; strings without NUL characters or lone surrogates"


def clean_text(text: str) -> bool:
    """Whether ``text`` holds neither a NUL character nor a lone surrogate."""
    if text.isascii():
        return "\x00" not in text
    return _BAD_CHAR.search(text) is None


def _char_problem(text: str) -> str | None:
    found = _BAD_CHAR.search(text)
    if found is None:
        return None
    char = found.group()
    kind = "a NUL character" if char == "\x00" else f"a lone surrogate ({ascii(char)})"
    return f"a string holding {kind} at index {found.start()}"


def _find_problem(value: Any, path: str) -> str | None:
    """Where ``value`` (JSON-like data) breaks the value policy, or ``None``. Only called
    on the slow path: when a quick check has seen something suspicious."""
    if isinstance(value, str):
        problem = _char_problem(value)
        return f"{path}: {problem}" if problem else None
    if isinstance(value, float):
        return None if value - value == 0.0 else f"{path}: the float {value!r} (not finite)"
    if isinstance(value, dict):
        for key, item in value.items():
            label = ascii(key) if len(str(key)) <= 40 else ascii(str(key)[:40]) + "..."
            if isinstance(key, str | float):
                problem = _find_problem(key, f"{path} key {label}")
                if problem:
                    return problem
            problem = _find_problem(item, f"{path}[{label}]")
            if problem:
                return problem
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problem = _find_problem(item, f"{path}[{index}]")
            if problem:
                return problem
    return None


def policy_error(what: str, problem: str) -> SerializationError:
    return SerializationError(f"{what} cannot be stored: {problem}. Values must be JSON ({_RULE}).")


def json_text(value: Any, what: str) -> str:
    """``value`` as compact JSON text (what ``json.dumps(value, allow_nan=False,
    separators=(",", ":"))`` returns), when the value policy admits it; otherwise a
    :class:`SerializationError` naming ``what`` and where in the value the problem is.

    The C encoder does the common work (and refuses NaN and what is not JSON); the text is
    ASCII with escapes, so a NUL or a surrogate can only hide behind a ``\\u`` escape,
    and only then are the strings looked at one by one.
    """
    try:
        text = _STRICT_JSON.encode(value)
    except (TypeError, ValueError) as exc:
        problem = _find_problem(value, "value") if isinstance(exc, ValueError) else None
        raise policy_error(what, problem or str(exc)) from None
    if "\\u" in text:
        problem = _find_problem(value, "value")
        if problem:
            raise policy_error(what, problem)
    return text


def check_json(data: Any, what: str) -> None:
    """Refuse ``data`` (JSON-compatible) that breaks the value policy; cheap for scalars."""
    kind = type(data)
    if kind is str:
        if not clean_text(data):
            raise policy_error(what, _char_problem(data) or "a bad string")
    elif kind is float:
        if data - data != 0.0:
            raise policy_error(what, f"the float {data!r} (not finite)")
    elif kind is not int and kind is not bool and data is not None:
        json_text(data, what)


def check_key(key: str, what: str = "idempotency_key") -> None:
    """Refuse an idempotency key that is too long or holds a character no backend keeps."""
    if len(key) > MAX_KEY_LENGTH:
        raise SerializationError(
            f"{what} is {len(key)} characters long; the limit is {MAX_KEY_LENGTH} "
            "(hash a longer natural key, e.g. with hashlib.sha256, to fit)"
        )
    if not clean_text(key):
        raise policy_error(what, _char_problem(key) or "a bad string")


def _clean_scalars(values: tuple[Any, ...] | list[Any]) -> bool:
    """Whether plain scalars keep the value policy (no bad string, no non-finite float)."""
    for value in values:
        kind = type(value)
        if kind is str:
            if not clean_text(value):
                return False
        elif kind is float and value - value != 0.0:
            return False
    return True


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "")


class _Codec:
    """One annotation's adapter. The annotation is wrapped in a 1-tuple because pydantic
    refuses ``config=`` for a bare dataclass; wrapped, stdlib dataclasses (and containers)
    inherit our config, so their bytes are base64. Pydantic models keep their own config."""

    __slots__ = ("_adapter",)

    def __init__(self, annotation: Any) -> None:
        self._adapter = TypeAdapter(tuple[annotation], config=_CONFIG)

    def dump(self, value: Any) -> Any:
        return self._adapter.dump_python((value,), mode="json", warnings="error")[0]

    def load(self, data: Any, strict: bool | None = None) -> Any:
        return self._adapter.validate_python((data,), strict=strict)[0]


@lru_cache(maxsize=4096)
def _codec(annotation: Any) -> _Codec:
    return _Codec(annotation)


def encode(value: Any, annotation: Any = _ANY, *, what: str = "value") -> Any:
    """``value`` as JSON-compatible data, according to ``annotation``, by the value policy.

    A value not of its declared type (a dict for a model, say) is encoded as what it is,
    and refused unless it decodes into the declared type."""
    kind = type(value)
    if kind in _PLAIN and (annotation is _ANY or annotation is kind):
        if (kind is str and not clean_text(value)) or (kind is float and value - value != 0.0):
            check_json(value, what)  # raises, naming the problem
        return value
    mismatch = False
    try:
        try:
            data = _codec(annotation).dump(value)
        except PydanticSerializationError:
            if annotation is _ANY:
                raise
            data = _codec(_ANY).dump(value)
            mismatch = True
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        raise SerializationError(
            f"{what} of type {type(value).__name__} cannot be encoded as JSON: {exc}. "
            "Use JSON types, pydantic models, dataclasses, datetime, UUID, Decimal, bytes or Enum."
        ) from None
    check_json(data, what)
    if mismatch:
        _matches(data, annotation, value, what)
    return data


def _matches(data: Any, annotation: Any, value: Any, what: str) -> Any:
    """``data`` decoded as ``annotation``; a :class:`SerializationError` when it is not one.
    For a plain scalar annotation (``-> int``) the check is strict: a ``str`` where an
    ``int`` is declared is a bug even when it looks like a number."""
    try:
        return _codec(annotation).load(data, True if annotation in _PLAIN_TYPES else None)
    except ValidationError as exc:
        detail = "; ".join(e["msg"] for e in exc.errors(include_url=False)[:3])
        raise SerializationError(
            f"{what} of type {type(value).__name__} does not match its annotation {_type_name(annotation)} "
            f"({detail}); it would not decode back, so it is refused before it is recorded"
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
        self._plain_scan = True  # whether plain arguments may be str or float (set with the hints)
        self._return: Any = _UNSET
        # The last result encode_result checked, and what it decodes to: decode_result of
        # that very object (the step path decodes what it just recorded) reuses it.
        self._checked: tuple[Any, Any] | None = None
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
        # The value policy, for parameters that may hold a str or a float (the slow path
        # refuses a bad one, naming the argument); int, bool and None need no look.
        return not self._plain_scan or _clean_scalars(args)

    def _find_plain_hints(self) -> tuple[Any, ...] | None:
        if self._plain_arity < 0:
            return None
        hints = tuple(self._hint(p.name) for p in self._params)
        self._plain_scan = any(h is _ANY or h is str or h is float for h in hints)
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
        """The result as JSON data, refused (:class:`SerializationError`) when it breaks
        the value policy or cannot be read back as the return annotation: a result is
        checked before it is recorded, never found unreadable on replay."""
        hint = self._return if self._return is not _UNSET else self._return_hint()
        kind = type(value)
        if kind in _PLAIN_TYPES and (hint is _ANY or hint is kind):
            if (kind is str and not clean_text(value)) or (kind is float and value - value != 0.0):
                check_json(value, f"{self.name}(): return value")  # raises, naming the problem
            return value
        what = f"{self.name}(): return value"
        data = encode(value, hint, what=what)
        if hint is not _ANY:
            self._checked = (data, _matches(data, hint, value, what))
        return data

    def decode_result(self, data: Any) -> Any:
        hint = self._return if self._return is not _UNSET else self._return_hint()
        if hint is _ANY or (type(data) is hint and hint in _PLAIN_TYPES):
            return data
        checked = self._checked
        if checked is not None and checked[0] is data:
            self._checked = None
            return checked[1]
        return decode(data, hint, what=f"{self.name}(): return value")
