"""Encryption at rest: a wrapper that stores the payloads of any backend encrypted.

``PYWORKFLOW_ENCRYPTION_KEY`` holds one or more Fernet keys, comma-separated, newest
first. When it is set, :func:`pyworkflow.storage.storage_from_url` wraps the backend in
:class:`EncryptedStorage`, which encrypts on the way in with the newest key and
decrypts on the way out with whichever key fits (``cryptography``'s ``MultiFernet``,
the ``encryption`` extra). Replay, the engine and every backend see the same contract.

What is stored encrypted, and nothing else (:data:`ENCRYPTED_FIELDS` is the table of
event fields; adding an event type is one line there):

=========================== =================================================
record                      encrypted
=========================== =================================================
run record                  ``input``, ``result``
workflow.started            ``input``
workflow.completed          ``result``
step.started                ``args``
step.dispatched             ``args``
step.completed              ``result``
message.received            ``payload``
signal.received             ``payload``
state.set                   ``value``
webhook.created             ``token``, ``url`` (it holds the token), ``secret``
child.completed             ``result``
every inbox message         ``payload`` (step outcomes and child results travel there too)
=========================== =================================================

Readable, on purpose: event types, seqs, timestamps, run and call ids, workflow and
step names, statuses, wake times, idempotency keys, message kinds, ``error`` fields
(a failure must be diagnosable without the key: they hold an exception's type, message
and traceback, which the operator needs), ``value.recorded`` values (a time, a uuid, a
random number) and log events. Tools (CLI, dashboard, replay checks) can list and
explain runs without a key; only values need it. A ``None`` value is stored as is.

**The envelope.** An encrypted value is replaced by ``{"$enc": "fernet", "v": "<token>"}``,
where the token is the Fernet encryption of the value's compact JSON text. The token
authenticates it: a wrong key is detected, never decoded into garbage. A value that is
not an envelope is returned as it is, so a store written before encryption was turned
on keeps working and turning it on is a change without migration (old runs stay
plaintext; new writes are encrypted).

**Errors.** An envelope that no configured key opens, or one read while no key is
configured, raises :class:`~pyworkflow.errors.EncryptionError` naming the run, what
was read (``event seq 3 (step.completed) field 'result'``, ``run input``, ``message 2
payload``) and the remedy; never the key. A malformed key raises
:class:`~pyworkflow.errors.ConfigurationError` naming the variable and the key's
position. Listings skip (and report) a run they cannot decrypt, like any unreadable
run; :meth:`EncryptedStorage.list_unreadable_runs` names it. An activation that cannot
decrypt its run gives its lease back before raising, so the run waits, intact, for
the right key.

**Without a key.** ``EncryptedStorage(backend)`` with no keys writes plaintext and
refuses envelopes on every read: the reader for a store that may hold encrypted runs
when no key is at hand. :func:`~pyworkflow.storage.storage_from_url` wraps only when a
key is given, and returns the bare backend otherwise. Wrapping always would make a
store read without its key fail clearly everywhere, but it is not free and not
transparent: measured with callgrind on ``benchmarks/instructions.py`` (memory storage,
3-step workflow), the keyless wrapper costs 10-15k instructions per run (+2-3 % of
~510k) for a check that finds nothing on every store that never used encryption, and
every caller of ``storage_from_url`` would get a wrapper where it expects its backend's
class (tests, benchmarks and tools read backend attributes such as ``path`` or
``schema``). So the unencrypted path stays exactly as it was (no layer at all); a
deployment that used encryption keeps the key set, and an operator without the key
wraps with none (``EncryptedStorage(backend)``) to get the clear error instead of
envelopes. With a key, the same run costs ~1.49M instructions (2.9x): about 10 µs per
value sealed or opened, 8 Fernet operations for that run (one value object written
twice in one write is sealed once: a run's input and its ``workflow.started`` event, a
result and its ``workflow.completed`` event; an activation decrypts a token it meets
twice once).

``cryptography`` is imported only when a key is parsed: ``import pyworkflow`` never
loads it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Coroutine, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pyworkflow.errors import ConfigurationError, CorruptedStorageError, EncryptionError
from pyworkflow.events import Event, trusted
from pyworkflow.serialization import json_text
from pyworkflow.storage.base import (
    Activation,
    Lease,
    Message,
    RunCounts,
    RunPage,
    RunStatus,
    StorageBackend,
    StoredSchedule,
    Timer,
    WorkflowRun,
    check_message,
    check_run_changes,
    corrupted,
    report_unreadable,
)

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

#: The environment variable holding the keys: Fernet keys, comma-separated, newest first.
ENCRYPTION_KEY_VARIABLE = "PYWORKFLOW_ENCRYPTION_KEY"

#: Event data fields stored encrypted, per event type. Stored data: never renamed.
ENCRYPTED_FIELDS: dict[str, tuple[str, ...]] = {
    "workflow.started": ("input",),
    "workflow.completed": ("result",),
    "step.started": ("args",),
    "step.dispatched": ("args",),
    "step.completed": ("result",),
    "message.received": ("payload",),
    "signal.received": ("payload",),
    "state.set": ("value",),
    "webhook.created": ("token", "url", "secret"),  # the URL ends with the token
    "child.completed": ("result",),  # a child's result, as its parent records it
}

ENVELOPE_TAG = "$enc"
ENVELOPE_SCHEME = "fernet"

#: Values sealed within one write, by object id: ``(value, envelope)``.
_Memo = dict[int, tuple[Any, Any]]

_FERNET_KEY = re.compile(rb"[A-Za-z0-9_-]{43}=")
_REMEDY = f"set {ENCRYPTION_KEY_VARIABLE} to the key the run was written with"
_MAKE_KEY = "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"


def is_envelope(value: Any) -> bool:
    """Whether a stored value is an encrypted envelope: exactly
    ``{"$enc": "fernet", "v": <str>}``; anything else is a plaintext value."""
    return (
        type(value) is dict
        and len(value) == 2
        and value.get(ENVELOPE_TAG) == ENVELOPE_SCHEME
        and type(value.get("v")) is str
    )


def parse_keys(value: str | bytes | Sequence[str | bytes], *, what: str = ENCRYPTION_KEY_VARIABLE) -> list[bytes]:
    """The Fernet keys of a setting: a comma-separated string (or a list), newest first.

    Raises :class:`~pyworkflow.errors.ConfigurationError` naming ``what`` and the
    position of a malformed key (never the key itself), for an empty setting, and when
    ``cryptography`` is not installed."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    parts: list[str | bytes]
    if isinstance(value, str):
        parts = list(value.split(","))
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        raise ConfigurationError(f"{what} must be a string of comma-separated Fernet keys, got {type(value).__name__}")
    if not parts or all(isinstance(p, str | bytes) and not p.strip() for p in parts):
        raise ConfigurationError(
            f"{what} is set but empty: give one or more Fernet keys, comma-separated, newest first "
            f"(make one with {_MAKE_KEY}), or unset it to store plaintext"
        )
    try:
        from cryptography.fernet import Fernet
    except ImportError:
        raise ConfigurationError(
            f"{what} is set but the 'cryptography' package is not installed: "
            "pip install 'pyworkflow-celery[encryption]'"
        ) from None
    keys: list[bytes] = []
    for position, part in enumerate(parts, 1):
        where = f"{what}: key {position} of {len(parts)}"
        if not isinstance(part, str | bytes):
            raise ConfigurationError(f"{where} is a {type(part).__name__}, not a Fernet key string")
        key = part.strip().encode("ascii", "replace") if isinstance(part, str) else part.strip()
        if not key:
            raise ConfigurationError(f"{where} is empty (a stray comma?); keys are comma-separated, newest first")
        try:
            if _FERNET_KEY.fullmatch(key) is None:  # strict: base64 would skip stray characters
                raise ValueError("not 44 url-safe base64 characters")
            Fernet(key)
        except (ValueError, TypeError):
            # the key itself is never shown: it is a secret, even when malformed
            raise ConfigurationError(
                f"{where} is not a Fernet key (32 url-safe base64-encoded bytes, {len(key)} characters given); "
                f"make one with {_MAKE_KEY}"
            ) from None
        keys.append(key)
    return keys


class Encryptor:
    """Encrypts values into envelopes with the newest key and opens envelopes with any
    key. With no keys it encrypts nothing and refuses every envelope."""

    def __init__(self, keys: Sequence[bytes] = ()) -> None:
        self.key_count = len(keys)
        self._fernet: MultiFernet | None = None
        if keys:
            from cryptography.fernet import Fernet, MultiFernet

            self._fernet = MultiFernet([Fernet(k) for k in keys])
        #: Whether values are sealed on the way in (a key is configured).
        self.enabled = self._fernet is not None

    @classmethod
    def from_setting(
        cls, value: str | bytes | Sequence[str | bytes] | None, *, what: str = ENCRYPTION_KEY_VARIABLE
    ) -> Encryptor:
        """An encryptor for a setting's keys (see :func:`parse_keys`); no keys for ``None``."""
        return cls(parse_keys(value, what=what) if value is not None else [])

    def __repr__(self) -> str:
        return f"Encryptor({self.key_count} key{'s' if self.key_count != 1 else ''})"  # never the keys

    def seal(self, value: Any, what: str) -> Any:
        """``value`` as an envelope (``None`` stays ``None``); ``what`` names it in a
        :class:`~pyworkflow.errors.SerializationError` for a value the policy refuses."""
        if value is None or self._fernet is None:
            return value
        return self.seal_text(json_text(value, what))

    def seal_text(self, text: str) -> dict[str, str]:
        """The envelope of a value's JSON text."""
        assert self._fernet is not None
        return {ENVELOPE_TAG: ENVELOPE_SCHEME, "v": self._fernet.encrypt(text.encode()).decode("ascii")}

    def open(self, value: Any, run_id: str, what: str, memo: dict[str, Any] | None = None) -> Any:
        """The value an envelope holds; any other value as it is. With ``memo``, a token
        met twice in one read (a run's input and its ``workflow.started`` event) is
        decrypted once."""
        if not is_envelope(value):
            return value
        if memo is not None:
            token = value["v"]
            if token in memo:
                return memo[token]
            memo[token] = opened = self.open(value, run_id, what)
            return opened
        if self._fernet is None:
            raise EncryptionError(
                f"run {run_id!r}: the stored {what} is encrypted and no key is configured "
                f"({ENCRYPTION_KEY_VARIABLE} is not set); {_REMEDY}",
                run_id=run_id,
                what=what,
            )
        from cryptography.fernet import InvalidToken

        try:
            plain = self._fernet.decrypt(value["v"].encode("ascii", "replace"))
        except InvalidToken:
            tried = (
                "the configured key does not decrypt it"
                if self.key_count == 1
                else f"none of the {self.key_count} configured keys decrypts it"
            )
            raise EncryptionError(
                f"run {run_id!r}: the stored {what} is encrypted with another key ({tried}); {_REMEDY} "
                "(while keys rotate, list the new key first and the old ones after it, comma-separated)",
                run_id=run_id,
                what=what,
            ) from None
        try:
            return json.loads(plain)
        except ValueError as exc:
            raise corrupted(run_id, what, exc) from None

    # -- records ------------------------------------------------------------------------

    def seal_run(self, run: WorkflowRun, memo: _Memo | None = None) -> WorkflowRun:
        if self._fernet is None or (not run.input and run.result is None):
            return run
        values = dict(vars(run))
        values["input"] = self._seal_once(run.input, f"run {run.run_id!r}: the input", memo)
        values["result"] = self._seal_once(run.result, "run field 'result'", memo)
        return trusted(WorkflowRun, values)

    def _seal_once(self, value: Any, what: str, memo: _Memo | None) -> Any:
        """:meth:`seal`, once per value object within one write: the run's input and its
        ``workflow.started`` event, or a result and its ``workflow.completed`` event, hold
        the same object, and share one envelope (the same plaintext under the same key)."""
        if memo is None or value is None:
            return self.seal(value, what)
        known = memo.get(id(value))
        if known is not None and known[0] is value:
            return known[1]
        sealed = self.seal(value, what)
        memo[id(value)] = (value, sealed)
        return sealed

    def open_run(self, run: WorkflowRun, memo: dict[str, Any] | None = None) -> WorkflowRun:
        given, result = run.input, run.result
        if ENVELOPE_TAG not in given and (type(result) is not dict or ENVELOPE_TAG not in result):
            return run  # nothing sealed (the common case without a key): no copy
        opened_input = self.open(given, run.run_id, "run input", memo)
        opened_result = self.open(result, run.run_id, "run result", memo)
        if opened_input is given and opened_result is result:
            return run
        values = dict(vars(run))
        values["input"], values["result"] = opened_input, opened_result
        return trusted(WorkflowRun, values)

    def seal_events(self, run_id: str, events: Sequence[Event], memo: _Memo | None = None) -> Sequence[Event]:
        if self._fernet is None:
            return events
        sealed: list[Event] | None = None
        for index, event in enumerate(events):
            fields = ENCRYPTED_FIELDS.get(event.type)
            if fields is None:
                continue
            data = event.data
            changed: dict[str, Any] | None = None
            for name in fields:
                value = data.get(name)
                if value is not None:
                    if changed is None:
                        changed = dict(data)
                    what = f"run {run_id!r}: event seq {event.seq} ({event.type}) field {name!r}"
                    changed[name] = self._seal_once(value, what, memo)
            if changed is not None:
                if sealed is None:
                    sealed = list(events)
                sealed[index] = trusted(Event, {**vars(event), "data": changed})
        return events if sealed is None else sealed

    def open_events(self, run_id: str, events: list[Event], memo: dict[str, Any] | None = None) -> list[Event]:
        opened: list[Event] | None = None
        for index, event in enumerate(events):
            fields = ENCRYPTED_FIELDS.get(event.type)
            if fields is None:
                continue
            data = event.data
            changed: dict[str, Any] | None = None
            for name in fields:
                value = data.get(name)
                if type(value) is dict and is_envelope(value):
                    if changed is None:
                        changed = dict(data)
                    what = f"event seq {event.seq} ({event.type}) field {name!r}"
                    changed[name] = self.open(value, run_id, what, memo)
            if changed is not None:
                if opened is None:
                    opened = list(events)
                opened[index] = trusted(Event, {**vars(event), "data": changed})
        return events if opened is None else opened

    def open_messages(self, run_id: str, messages: list[Message]) -> list[Message]:
        opened: list[Message] | None = None
        for index, message in enumerate(messages):
            payload = message.payload
            if type(payload) is dict and is_envelope(payload):
                if opened is None:
                    opened = list(messages)
                values = dict(vars(message))
                values["payload"] = self.open(payload, run_id, f"message {message.seq} payload")
                opened[index] = trusted(Message, values)
        return messages if opened is None else opened


class EncryptedStorage(StorageBackend):
    """Any backend, with payloads stored encrypted (see the module docstring).

    ``keys``: Fernet keys, newest first, as a comma-separated string, a list, or an
    :class:`Encryptor`; ``None`` or no keys makes a reader that refuses envelopes and
    writes plaintext. Every method of the storage contract is delegated to ``inner``.
    """

    def __init__(
        self,
        inner: StorageBackend,
        keys: str | bytes | Sequence[str | bytes] | Encryptor | None = None,
        *,
        what: str = ENCRYPTION_KEY_VARIABLE,
    ) -> None:
        if not isinstance(inner, StorageBackend):
            raise ConfigurationError(f"EncryptedStorage wraps a StorageBackend, got {inner!r}")
        if isinstance(inner, EncryptedStorage):
            # twice sealed would read back as an envelope through one layer
            raise ConfigurationError(
                f"{inner!r} is encrypted already (storage_from_url wraps when {ENCRYPTION_KEY_VARIABLE} is set)"
            )
        self.inner = inner
        self.encryptor = keys if isinstance(keys, Encryptor) else Encryptor.from_setting(keys, what=what)
        self.url = inner.url
        # the driver errors that mean "unreachable for now" pass through unchanged
        self.unavailable_errors: tuple[type[BaseException], ...] = getattr(inner, "unavailable_errors", ())

    def __repr__(self) -> str:
        return f"EncryptedStorage({self.inner!r}, {self.encryptor!r})"

    async def close(self) -> None:
        await self.inner.close()

    # -- runs -----------------------------------------------------------------

    async def create_run(self, run: WorkflowRun, events: Sequence[Event] = ()) -> tuple[WorkflowRun, bool]:
        enc = self.encryptor
        if not enc.enabled:
            stored, created = await self.inner.create_run(run, events)
            return (stored if created else enc.open_run(stored)), created
        memo: _Memo = {}
        sealed_run = enc.seal_run(run, memo)
        stored, created = await self.inner.create_run(sealed_run, enc.seal_events(run.run_id, events, memo))
        if created and stored.run_id == run.run_id:
            # what was just written: no need to decrypt it again
            values = dict(vars(stored))
            values["input"], values["result"] = run.input, run.result
            return trusted(WorkflowRun, values), True
        return enc.open_run(stored), created

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        run = await self.inner.get_run(run_id)
        return None if run is None else self.encryptor.open_run(run)

    async def update_run(self, run_id: str, **changes: Any) -> WorkflowRun:
        result = changes.get("result")
        if result is not None and self.encryptor.enabled:
            changes = check_run_changes(changes)  # every refusal as the backend words it
            changes["result"] = self.encryptor.seal(result, "run field 'result'")
        return self.encryptor.open_run(await self.inner.update_run(run_id, **changes))

    async def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        workflow_name: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage:
        page = await self.inner.list_runs(
            status=status,
            workflow_name=workflow_name,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            cursor=cursor,
        )
        runs = []
        for run in page.runs:
            try:
                runs.append(self.encryptor.open_run(run))
            except CorruptedStorageError as exc:  # EncryptionError too: one such run never hides the others
                report_unreadable(run.run_id, "list_runs", exc)
        if len(runs) == len(page.runs) and all(a is b for a, b in zip(runs, page.runs, strict=True)):
            return page
        return RunPage(runs=runs, next_cursor=page.next_cursor)

    async def count_runs(self, *, created_after: datetime | None = None) -> RunCounts:
        # Statuses and workflow names are stored readable: nothing to open.
        return await self.inner.count_runs(created_after=created_after)

    async def delete_run(self, run_id: str) -> bool:
        return await self.inner.delete_run(run_id)

    async def prune_runs(self, *, older_than: datetime, statuses: Sequence[RunStatus | str] | None = None) -> int:
        return await self.inner.prune_runs(older_than=older_than, statuses=statuses)

    # -- events ---------------------------------------------------------------

    def append_events(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        lease_token: str | None = None,
        run_changes: Mapping[str, Any] | None = None,
        consume: Sequence[int] = (),
        release_lease: bool = False,
    ) -> Coroutine[Any, Any, None]:
        # A plain function: without a key, the inner call itself (no coroutine layer of
        # its own); with one, a coroutine that seals first (so errors come when awaited).
        if not self.encryptor.enabled:
            return self.inner.append_events(
                run_id,
                events,
                lease_token=lease_token,
                run_changes=run_changes,
                consume=consume,
                release_lease=release_lease,
            )
        return self._append_sealed(run_id, events, lease_token, run_changes, consume, release_lease)

    async def _append_sealed(
        self,
        run_id: str,
        events: Sequence[Event],
        lease_token: str | None,
        run_changes: Mapping[str, Any] | None,
        consume: Sequence[int],
        release_lease: bool,
    ) -> None:
        enc = self.encryptor
        memo: _Memo = {}
        events = enc.seal_events(run_id, events, memo)
        if run_changes and run_changes.get("result") is not None:
            result = enc._seal_once(run_changes["result"], "run field 'result'", memo)
            run_changes = {**run_changes, "result": result}
        await self.inner.append_events(
            run_id,
            events,
            lease_token=lease_token,
            run_changes=run_changes,
            consume=consume,
            release_lease=release_lease,
        )

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        events = await self.inner.get_events(run_id, after_seq=after_seq, limit=limit)
        return self.encryptor.open_events(run_id, events)

    # -- timers ---------------------------------------------------------------

    async def get_timer(self, run_id: str) -> Timer | None:
        return await self.inner.get_timer(run_id)

    async def claim_due_timers(self, now: datetime, *, limit: int = 100, redeliver_after: float = 30.0) -> list[Timer]:
        return await self.inner.claim_due_timers(now, limit=limit, redeliver_after=redeliver_after)

    # -- inbox ----------------------------------------------------------------

    async def post_message(
        self, run_id: str, kind: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> str:
        if self.encryptor.enabled and payload is not None:
            # checked first, as the backend would (the same errors), then sealed
            payload = self.encryptor.seal_text(check_message(run_id, kind, payload, idempotency_key))
        return await self.inner.post_message(run_id, kind, payload, idempotency_key=idempotency_key)

    async def get_messages(self, run_id: str, *, pending_only: bool = True) -> list[Message]:
        messages = await self.inner.get_messages(run_id, pending_only=pending_only)
        return self.encryptor.open_messages(run_id, messages)

    async def begin_activation(self, run_id: str, owner: str, ttl: float, *, now: datetime) -> Activation:
        begun = await self.inner.begin_activation(run_id, owner, ttl, now=now)
        enc = self.encryptor
        memo: dict[str, Any] = {}
        try:
            if begun.run is not None:
                begun.run = enc.open_run(begun.run, memo)
            if begun.events:
                begun.events = enc.open_events(run_id, begun.events, memo)
            if begun.messages:
                begun.messages = enc.open_messages(run_id, begun.messages)
        except Exception:
            # Nothing ran: give the lease back, so the run waits intact for the right key
            # (and is not recovered as a crashed activation every lease time).
            if begun.lease is not None:
                await self.inner.release_lease(begun.lease)
            raise
        return begun

    # -- leases ---------------------------------------------------------------

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | None:
        return await self.inner.acquire_lease(run_id, owner, ttl)

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        return await self.inner.renew_lease(lease, ttl)

    async def release_lease(self, lease: Lease) -> None:
        await self.inner.release_lease(lease)

    async def recover_expired_leases(self, *, limit: int = 100) -> list[str]:
        return await self.inner.recover_expired_leases(limit=limit)

    # -- schedules --------------------------------------------------------------
    # A schedule's body holds the arguments of the runs it starts under "input": sealed
    # like a run's input; the rest (times, counters) stays readable to the backend.

    async def save_schedule(self, schedule_id: str, body: str, due_at: datetime | None, *, version: int) -> int | None:
        if self.encryptor.enabled:
            record = json.loads(body)
            if record.get("input") is not None:
                record["input"] = self.encryptor.seal(record["input"], f"schedule {schedule_id!r}: the input")
                body = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        return await self.inner.save_schedule(schedule_id, body, due_at, version=version)

    def _open_schedule(self, schedule: StoredSchedule | None) -> StoredSchedule | None:
        if schedule is None or ENVELOPE_TAG not in schedule.body:
            return schedule
        record = json.loads(schedule.body)
        record["input"] = self.encryptor.open(record.get("input"), f"schedule:{schedule.schedule_id}", "schedule input")
        body = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        return StoredSchedule(schedule.schedule_id, body, schedule.due_at, schedule.version)

    async def get_schedule(self, schedule_id: str) -> StoredSchedule | None:
        return self._open_schedule(await self.inner.get_schedule(schedule_id))

    async def list_schedules(self, *, after: str | None = None, limit: int = 100) -> list[StoredSchedule]:
        found = await self.inner.list_schedules(after=after, limit=limit)
        return [s for s in map(self._open_schedule, found) if s is not None]

    async def delete_schedule(self, schedule_id: str) -> bool:
        return await self.inner.delete_schedule(schedule_id)

    async def due_schedules(self, now: datetime, *, limit: int = 100) -> list[StoredSchedule]:
        found = await self.inner.due_schedules(now, limit=limit)
        return [s for s in map(self._open_schedule, found) if s is not None]

    # -- unreadable runs --------------------------------------------------------

    async def list_unreadable_runs(self, *, limit: int = 100) -> list[str]:
        """The inner backend's unreadable runs, then the runs whose record holds an
        envelope the configured keys cannot open (reads every run: for operators)."""
        found = list(await self.inner.list_unreadable_runs(limit=limit))
        cursor: str | None = None
        while len(found) < limit:
            page = await self.inner.list_runs(limit=500, cursor=cursor)
            for run in page.runs:
                try:
                    self.encryptor.open_run(run)
                except CorruptedStorageError:  # EncryptionError too
                    if run.run_id not in found:
                        found.append(run.run_id)
                        if len(found) >= limit:
                            break
            cursor = page.next_cursor
            if cursor is None:
                break
        return found[:limit]


__all__ = [
    "ENCRYPTED_FIELDS",
    "ENCRYPTION_KEY_VARIABLE",
    "EncryptedStorage",
    "Encryptor",
    "is_envelope",
    "parse_keys",
]
