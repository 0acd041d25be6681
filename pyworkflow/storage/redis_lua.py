"""The Lua scripts of the Redis backend (see :mod:`pyworkflow.storage.redis`).

Every operation is one script, so one round trip and one atomic step. Scripts make all
their checks (and the reads that would fail on a key of the wrong type) before their
first write, because Redis does not roll a script back when it fails midway. No JSON is
decoded in Lua: cjson would rewrite user data (big integers, floats, ``[]`` versus
``{}``); user JSON is stored and returned as the text Python wrote.

Replies are tables whose first item is a code (the ``C_*`` constants below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyworkflow.storage.base import TERMINAL_STATUSES, WorkflowRun

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

C_OK, C_EXISTING, C_NOT_FOUND, C_REFUSED, C_CORRUPT, C_DUPLICATE, C_FINISHED = 1, 0, -1, -2, -4, -5, -6
#: begin_activation's codes (C_OK: leased, C_NOT_FOUND: missing)
C_BEGIN = {2: "finished", 3: "busy", 4: "not_due"}

#: The hash fields that hold the record (each a JSON text).
RECORD_FIELDS = tuple(WorkflowRun.model_fields)

# read_record(key) -> false when the hash does not exist, else one string: @seq and the
# record fields, joined by RS (0x1E), a missing field written as US (0x1F). A reply item
# costs the client far more than a byte, and neither byte can occur in JSON text (control
# characters are escaped inside strings), so splitting is exact and a stray one is damage.
_LIB = (
    "local RECORD_FIELDS = {"
    + ", ".join(f"'{name}'" for name in RECORD_FIELDS)
    + "}\nlocal TERMINAL = {"
    + ", ".join(f"['{status.value}'] = true" for status in sorted(TERMINAL_STATUSES))
    + "}\n"
    + """
local RS, US = string.char(30), string.char(31)
local function read_record(key)
  local values = redis.call('HMGET', key, '@seq', unpack(RECORD_FIELDS))
  local found = false
  for i = 1, #values do
    if values[i] then found = true else values[i] = US end
  end
  if not found then return false end
  return table.concat(values, RS)
end

-- unpack() puts every argument on Lua's C stack (about 8000 slots): work in chunks.
local function chunked(command, key, items)
  local n = 0
  for i = 1, #items, 1000 do
    n = n + redis.call(command, key, unpack(items, i, math.min(i + 999, #items)))
  end
  return n
end

-- The parts of a string joined by the one-byte separator sep ('' gives {}): string.find
-- in plain mode, so no pattern is ever built from data.
local function split(s, sep)
  local out, i = {}, 1
  if s == '' then return out end
  while true do
    local j = string.find(s, sep, i, true)
    if not j then
      out[#out + 1] = string.sub(s, i)
      return out
    end
    out[#out + 1] = string.sub(s, i, j - 1)
    i = j + 1
  end
end

-- The key stems (see STEMS): each written as "{byte length}:{stem}", so a prefix may
-- hold any byte.
local function stems(s)
  local out, i = {}, 1
  while i <= #s do
    local colon = string.find(s, ':', i, true)
    local n = tonumber(string.sub(s, i, colon - 1))
    out[#out + 1] = string.sub(s, colon + 1, colon + n)
    i = colon + n + 1
  end
  return out
end

-- Messages as flat triples (seq, consumed 0/1, text): the pending ones in arrival order,
-- or every one (in hash order; the caller sorts).
local function load_messages(inbox, pending, all)
  local seqs = redis.call('ZRANGE', pending, 0, -1)
  local out = {}
  if all then
    local waiting = {}
    for _, s in ipairs(seqs) do waiting[s] = true end
    local flat = redis.call('HGETALL', inbox)
    for i = 1, #flat, 2 do
      if string.sub(flat[i], 1, 2) ~= 'k:' then
        out[#out + 1] = flat[i]
        out[#out + 1] = waiting[flat[i]] and 0 or 1
        out[#out + 1] = flat[i + 1]
      end
    end
    return out
  end
  for i = 1, #seqs, 1000 do
    local part = {unpack(seqs, i, math.min(i + 999, #seqs))}
    local texts = redis.call('HMGET', inbox, unpack(part))
    for j, s in ipairs(part) do
      out[#out + 1] = s
      out[#out + 1] = 0
      out[#out + 1] = texts[j]
    end
  end
  return out
end
"""
)

# KEYS: run
READ = _LIB + "return read_record(KEYS[1])\n"

# The scripts below take no KEYS: they derive a run's keys from the stems in ARGV[1]
# (see STEMS) and the run id in ARGV[2], and read index keys from the record, so the
# backend needs a single Redis node (not Cluster). Values Python formats (numbers,
# statuses, JSON texts) travel joined into one header string by US, events joined by RS
# (neither byte can occur in JSON text); strings a caller chooses (run ids, tokens,
# owners, idempotency keys, workflow names) travel as arguments of their own. Far fewer
# arguments make a call much cheaper for the client, which packs each one separately.
_RUN = """
local S = stems(ARGV[1])
local ID = ARGV[2]
"""

# ARGV: 1 stems, 2 run_id, 3 idempotency key ('' = none), 4 workflow index key,
#       5 workflow+status stem, 6 header: index time key, status, @wake, then the
#       record's field/value pairs; 7 events
CREATE = (
    _LIB
    + _RUN
    + """
local run_key, events_key, idem = S[1] .. ID, S[2] .. ID, ARGV[3]
if idem ~= '' then
  local existing = redis.call('GET', idem)
  if existing then return {0, existing, read_record(existing)} end
end
if redis.call('EXISTS', run_key) == 1 then return {-5} end
if redis.call('EXISTS', events_key) == 1 then return {-4, 'an event log exists for a run that has no record'} end
local h = split(ARGV[6], US)
local events = split(ARGV[7], RS)
local member, status = h[1] .. '|' .. ID, h[2]
local fields = {}
for i = 4, #h do fields[#fields + 1] = h[i] end
fields[#fields + 1] = '@seq'
fields[#fields + 1] = string.format('%d', #events)
fields[#fields + 1] = '@status'
fields[#fields + 1] = status
fields[#fields + 1] = '@member'
fields[#fields + 1] = member
fields[#fields + 1] = '@wake'
fields[#fields + 1] = h[3]
fields[#fields + 1] = '@wf_index'
fields[#fields + 1] = ARGV[4]
fields[#fields + 1] = '@wfs_stem'
fields[#fields + 1] = ARGV[5]
if idem ~= '' then
  fields[#fields + 1] = '@idem'
  fields[#fields + 1] = idem
end
-- The log first: if its key is not a list this fails before anything is written.
chunked('RPUSH', events_key, events)
redis.call('HSET', run_key, unpack(fields))
if idem ~= '' then redis.call('SET', idem, run_key) end
redis.call('ZADD', S[8], 0, member)
redis.call('ZADD', S[9] .. status, 0, member)
redis.call('ZADD', ARGV[4], 0, member)
redis.call('ZADD', ARGV[5] .. status, 0, member)
-- the start guard: a new run with a wake time is due then if no activation ran it
if h[3] ~= '' then redis.call('ZADD', S[7], tonumber(h[3]), ID) end
return {1}
"""
)

# ARGV: 1 stems, 2 run_id, 3 lease token ('' = none), 4 header: 1 expected last seq
#       ('' = no check), 2 new status ('' = unchanged), 3 return record '1'/'0',
#       4 release lease '1'/'0', 5 wake ('-' timer untouched, 'keep' the stored wake,
#       '' none, else µs), 6 now (µs), 7 now as a record JSON text, 8 consumed seqs
#       joined by ',' ('' = none), 9… field/value pairs; 5 events
APPEND = (
    _LIB
    + _RUN
    + """
local run_key, events_key, pending_key = S[1] .. ID, S[2] .. ID, S[4] .. ID
local leases, lease_expiry, timers, status_stem = S[5], S[6], S[7], S[9]
local token = ARGV[3]
local h = split(ARGV[4], US)
local meta = redis.call('HMGET', run_key, '@seq', '@status', '@member', '@wfs_stem', '@wake')
if not meta[1] then
  if redis.call('EXISTS', run_key) == 1 then return {-4, 'no @seq field'} end
  return {-1}
end
local last = tonumber(meta[1])
if not last then return {-4, '@seq is not a number'} end
-- O(1), and it keeps what get_events relies on: list index i holds seq i + 1.
local length = redis.call('LLEN', events_key)
if length ~= last then return {-4, string.format('@seq is %d but the log holds %d events', last, length)} end
local held = false
if token ~= '' then held = redis.call('HGET', leases, ID) end
if (h[1] ~= '' and last ~= tonumber(h[1]))
    or (token ~= '' and not (held and string.sub(held, 1, #token + 1) == token .. ' ')) then
  return {-2, last, held or ''}
end
local status, new_status = meta[2], h[2]
local moves = new_status ~= '' and new_status ~= status
if moves and not (status and meta[3] and meta[4]) then return {-4, 'index meta fields missing'} end
local wake = h[5]
if wake == 'keep' then wake = meta[5] or '' end
if wake ~= '-' and wake ~= '' and not tonumber(wake) then return {-4, '@wake is not a number'} end
local consumed = split(h[8], ',')
local pending = 0
if #consumed > 0 or wake ~= '-' then pending = redis.call('ZCARD', pending_key) end
local events = split(ARGV[5], RS)
local fields = {}
for i = 9, #h do fields[#fields + 1] = h[i] end
if #events > 0 then
  -- The log first: if its key is not a list this fails before anything is written.
  chunked('RPUSH', events_key, events)
  fields[#fields + 1] = '@seq'
  fields[#fields + 1] = string.format('%d', last + #events)
end
if #consumed > 0 then pending = pending - chunked('ZREM', pending_key, consumed) end
if moves then
  local member = meta[3]
  redis.call('ZREM', status_stem .. status, member)
  redis.call('ZADD', status_stem .. new_status, 0, member)
  redis.call('ZREM', meta[4] .. status, member)
  redis.call('ZADD', meta[4] .. new_status, 0, member)
  fields[#fields + 1] = '@status'
  fields[#fields + 1] = new_status
end
if wake ~= '-' then
  -- effective_wake: a finished run never wakes; pending messages make it due now.
  local final, now, due = new_status ~= '' and new_status or status, tonumber(h[6]), wake
  if TERMINAL[final] then
    due = ''
  elseif pending > 0 and (wake == '' or tonumber(wake) > now) then
    due = h[6]
  end
  fields[#fields + 1] = '@wake'
  fields[#fields + 1] = due
  -- After the requested wake_at among the pairs: HSET sets its fields in order.
  if due ~= wake then
    fields[#fields + 1] = 'wake_at'
    fields[#fields + 1] = due == '' and 'null' or h[7]
  end
  if due == '' then redis.call('ZREM', timers, ID) else redis.call('ZADD', timers, due, ID) end
end
if #fields > 0 then redis.call('HSET', run_key, unpack(fields)) end
if h[4] == '1' then
  redis.call('HDEL', leases, ID)
  redis.call('ZREM', lease_expiry, ID)
end
if h[3] == '1' then return {1, read_record(run_key)} end
return {1}
"""
)

# ARGV: 1 stems, 2 run_id, 3 idempotency key ('' = none), 4 header: now (µs), now as a
#       record JSON text; 5 message text
POST = (
    _LIB
    + _RUN
    + """
local run_key, inbox, pending_key, timers = S[1] .. ID, S[3] .. ID, S[4] .. ID, S[7]
local key = ARGV[3]
local h = split(ARGV[4], US)
local meta = redis.call('HMGET', run_key, '@status', '@wake', '@mseq')
local status = meta[1]
if not status then
  if redis.call('EXISTS', run_key) == 1 then return {-4, 'no @status field'} end
  return {-1}
end
if key ~= '' then
  local seq = redis.call('HGET', inbox, 'k:' .. key)
  if seq then return {0, seq} end
end
if TERMINAL[status] then return {-6, status} end
local seq = tonumber(meta[3] or '0')
if not seq then return {-4, '@mseq is not a number'} end
seq = string.format('%d', seq + 1)
if redis.call('HEXISTS', inbox, seq) == 1 then return {-4, 'the message counter is behind the inbox'} end
local wake, now = meta[2], tonumber(h[1])
if wake and wake ~= '' and not tonumber(wake) then return {-4, '@wake is not a number'} end
redis.call('ZADD', pending_key, seq, seq)
if key ~= '' then
  redis.call('HSET', inbox, seq, ARGV[5], 'k:' .. key, seq)
else
  redis.call('HSET', inbox, seq, ARGV[5])
end
-- woken_by_message: a later wake time, or a suspended run waiting for messages only
local waiting = status == 'suspended' or status == 'paused' or status == 'blocked'
if (wake and wake ~= '' and tonumber(wake) > now) or ((not wake or wake == '') and waiting) then
  redis.call('HSET', run_key, '@mseq', seq, '@wake', h[1], 'wake_at', h[2], 'updated_at', h[2])
else
  redis.call('HSET', run_key, '@mseq', seq)
end
-- LT: the timer becomes min(timer, now); a missing timer is added.
redis.call('ZADD', timers, 'LT', h[1], ID)
return {1, seq}
"""
)

# KEYS: inbox, pending.  ARGV: '1' every message, '0' the pending ones
MESSAGES = _LIB + "return load_messages(KEYS[1], KEYS[2], ARGV[1] == '1')\n"

# ARGV: 1 stems, 2 run_id, 3 "token owner", 4 header: now (s), expires at (s), now (µs)
BEGIN = (
    _LIB
    + _RUN
    + """
local run_key, events_key, inbox, pending_key = S[1] .. ID, S[2] .. ID, S[3] .. ID, S[4] .. ID
local leases, lease_expiry, timers = S[5], S[6], S[7]
local h = split(ARGV[4], US)
local meta = redis.call('HMGET', run_key, '@status', '@wake')
local status = meta[1]
if not status then
  if redis.call('EXISTS', run_key) == 1 then return {-4, 'no @status field'} end
  return {-1}
end
local record = read_record(run_key)
if TERMINAL[status] then
  redis.call('ZREM', timers, ID)
  return {2, record}
end
local expires = redis.call('ZSCORE', lease_expiry, ID)
if expires and tonumber(expires) > tonumber(h[1]) then return {3, record} end
local wake = tonumber(meta[2] or '')
-- not_due: suspended, nothing pending, and a wake time ahead or none (waiting for a message)
if (status == 'suspended' or status == 'paused' or status == 'blocked') and (not wake or wake > tonumber(h[3]))
    and redis.call('ZCARD', pending_key) == 0 then
  return {4, record}
end
local items = redis.call('LRANGE', events_key, 0, -1)
local messages = load_messages(inbox, pending_key, false)
redis.call('HSET', leases, ID, ARGV[3])
redis.call('ZADD', lease_expiry, h[2], ID)
-- an expired lease nobody released: its holder died (6th: '1')
return {1, record, #items, table.concat(items, ','), messages, expires and '1' or '0'}
"""
)

# KEYS: run, events, inbox, pending, leases, lease_expiry, timers, all
# ARGV: run_id, status stem
DELETE = """
local meta = redis.call('HMGET', KEYS[1], '@status', '@member', '@wf_index', '@wfs_stem', '@idem')
if not (meta[1] and meta[2] and meta[3] and meta[4]) then
  if redis.call('EXISTS', KEYS[1]) == 1 then return -4 end
  return 0
end
local member = meta[2]
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[8], member)
redis.call('ZREM', ARGV[2] .. meta[1], member)
redis.call('ZREM', meta[3], member)
redis.call('ZREM', meta[4] .. meta[1], member)
-- Only drop the idempotency key while it still names this run.
if meta[5] and redis.call('GET', meta[5]) == KEYS[1] then redis.call('DEL', meta[5]) end
return 1
"""

# KEYS: index.  ARGV: max bound, min bound, count, run key stem, index of the id in a member
# Returns (member, record) pairs: the member ("time|run_id") lets the cursor pass a record
# that cannot be read back.
LIST = (
    _LIB
    + """
local members = redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
local at = tonumber(ARGV[5])
for _, member in ipairs(members) do
  out[#out + 1] = member
  out[#out + 1] = read_record(ARGV[4] .. string.sub(member, at))
end
return out
"""
)

# KEYS: events.  ARGV: first index, last index
# One joined string instead of one reply item per event: the client parses a single
# bulk string and pydantic one JSON array, several times faster than item by item.
EVENTS = """
local items = redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[2])
return {#items, table.concat(items, ',')}
"""

# KEYS: timers.  ARGV: now (µs), redeliver at (µs), limit, the run keys' stem
# Returns run_id, score, the workflow_name field's JSON text ('' if none) for each.
CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], due[i])
  local name = redis.call('HGET', ARGV[4] .. due[i], 'workflow_name')
  out[#out + 1] = due[i]; out[#out + 1] = due[i + 1]; out[#out + 1] = name or ''
end
return out
"""

# KEYS: schedule, schedules, schedules_due.  ARGV: schedule_id, version read, body, due (µs or '')
SAVE_SCHEDULE = """
local held = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if held ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'version', held + 1, 'body', ARGV[3], 'due', ARGV[4])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
if ARGV[4] == '' then redis.call('ZREM', KEYS[3], ARGV[1]) else redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1]) end
return held + 1
"""

# KEYS: schedule, schedules, schedules_due.  ARGV: schedule_id
DELETE_SCHEDULE = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return redis.call('DEL', KEYS[1])
"""

# KEYS: leases, lease_expiry.  ARGV: run_id, "token owner", now (s), expires at (s)
ACQUIRE = """
local expires = redis.call('ZSCORE', KEYS[2], ARGV[1])
if expires and tonumber(expires) > tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1
"""

_HELD = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
local holds = held and string.sub(held, 1, #ARGV[2] + 1) == ARGV[2] .. ' '
"""

# KEYS: leases, lease_expiry.  ARGV: run_id, token, new expiry (s)
RENEW = (
    _HELD
    + """
if not holds then return false end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return held
"""
)

# KEYS: leases, lease_expiry.  ARGV: run_id, token
RELEASE = (
    _HELD
    + """
if holds then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 0
"""
)

# KEYS: leases, lease_expiry, timers.  ARGV: now (s), now (µs), limit
RECOVER = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, run_id in ipairs(expired) do
  redis.call('HDEL', KEYS[1], run_id)
  redis.call('ZREM', KEYS[2], run_id)
  redis.call('ZADD', KEYS[3], ARGV[2], run_id)
end
return expired
"""


#: The key stems ARGV[1] of the run scripts holds, in this order (S[1]… in Lua): the
#: run keys' patterns without their run id, then whole keys and the status index stem.
STEM_NAMES = ("run", "events", "inbox", "pending", "leases", "lease_expiry", "timers", "all_runs", "by_status")


def pack_stems(stems: list[str]) -> str:
    """The stems as the run scripts read them: ``"{byte length}:{stem}"`` each."""
    return "".join(f"{len(stem.encode())}:{stem}" for stem in stems)


@dataclass(frozen=True)
class Scripts:
    """One client and its registered scripts (EVALSHA; loaded on the first NOSCRIPT).

    ``timeout`` bounds each operation (seconds) when the client was made without a
    per-command socket timeout (see :mod:`.redis_clients`); ``None`` leaves timeouts
    to the client's own options.
    """

    client: Any
    create: AsyncScript
    read: AsyncScript
    append: AsyncScript
    post: AsyncScript
    messages: AsyncScript
    begin: AsyncScript
    delete: AsyncScript
    list: AsyncScript
    events: AsyncScript
    claim: AsyncScript
    acquire: AsyncScript
    renew: AsyncScript
    release: AsyncScript
    recover: AsyncScript
    save_schedule: AsyncScript
    delete_schedule: AsyncScript
    timeout: float | None = None

    @classmethod
    def register(cls, client: Any, timeout: float | None = None) -> Scripts:
        sources = {
            "create": CREATE, "read": READ, "append": APPEND, "post": POST, "messages": MESSAGES,
            "begin": BEGIN, "delete": DELETE, "list": LIST, "events": EVENTS, "claim": CLAIM,
            "acquire": ACQUIRE, "renew": RENEW, "release": RELEASE, "recover": RECOVER,
            "save_schedule": SAVE_SCHEDULE, "delete_schedule": DELETE_SCHEDULE,
        }  # fmt: skip
        return cls(
            client=client, timeout=timeout, **{name: client.register_script(src) for name, src in sources.items()}
        )
