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
local function chunked(command, key, from, to)
  local n = 0
  for i = from, to, 1000 do
    n = n + redis.call(command, key, unpack(ARGV, i, math.min(i + 999, to)))
  end
  return n
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

# KEYS: run, events, idempotency ('' = none), all, by_status, by_workflow, by_wf_status
# ARGV: member, n_fields, field/value pairs…, events…
CREATE = (
    _LIB
    + """
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {0, existing, read_record(existing)} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {-5} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {-4, 'an event log exists for a run that has no record'} end
local first_event = 3 + 2 * tonumber(ARGV[2])
-- The log first: if its key is not a list this fails before anything is written.
chunked('RPUSH', KEYS[2], first_event, #ARGV)
redis.call('HSET', KEYS[1], unpack(ARGV, 3, first_event - 1))
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], KEYS[1]) end
for i = 4, 7 do redis.call('ZADD', KEYS[i], 0, ARGV[1]) end
return {1}
"""
)

# KEYS: run, events, leases, lease_expiry, pending, timers
# ARGV: 1 run_id, 2 expected last seq ('' = no check), 3 lease token ('' = none),
#       4 status stem, 5 new status ('' = unchanged), 6 return record '1'/'0',
#       7 release lease '1'/'0', 8 wake ('-' timer untouched, 'keep' the stored wake,
#       '' none, else µs), 9 now (µs), 10 now as a record JSON text,
#       11 n consumed, consumed seqs…, n_pairs, field/value pairs…, events…
APPEND = (
    _LIB
    + """
local meta = redis.call('HMGET', KEYS[1], '@seq', '@status', '@member', '@wfs_stem', '@wake')
if not meta[1] then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {-4, 'no @seq field'} end
  return {-1}
end
local last = tonumber(meta[1])
if not last then return {-4, '@seq is not a number'} end
-- O(1), and it keeps what get_events relies on: list index i holds seq i + 1.
local length = redis.call('LLEN', KEYS[2])
if length ~= last then return {-4, string.format('@seq is %d but the log holds %d events', last, length)} end
local held = false
if ARGV[3] ~= '' then held = redis.call('HGET', KEYS[3], ARGV[1]) end
if (ARGV[2] ~= '' and last ~= tonumber(ARGV[2]))
    or (ARGV[3] ~= '' and not (held and string.sub(held, 1, #ARGV[3] + 1) == ARGV[3] .. ' ')) then
  return {-2, last, held or ''}
end
local status, new_status = meta[2], ARGV[5]
local moves = new_status ~= '' and new_status ~= status
if moves and not (status and meta[3] and meta[4]) then return {-4, 'index meta fields missing'} end
local wake = ARGV[8]
if wake == 'keep' then wake = meta[5] or '' end
if wake ~= '-' and wake ~= '' and not tonumber(wake) then return {-4, '@wake is not a number'} end
local nc = tonumber(ARGV[11])
local pending = 0
if nc > 0 or wake ~= '-' then pending = redis.call('ZCARD', KEYS[5]) end
local first_pair = 13 + nc
local first_event = first_pair + 2 * tonumber(ARGV[12 + nc])
local count = #ARGV - first_event + 1
local fields = {}
for i = first_pair, first_event - 1 do fields[#fields + 1] = ARGV[i] end
if count > 0 then
  -- The log first: if its key is not a list this fails before anything is written.
  chunked('RPUSH', KEYS[2], first_event, #ARGV)
  fields[#fields + 1] = '@seq'
  fields[#fields + 1] = string.format('%d', last + count)
end
if nc > 0 then pending = pending - chunked('ZREM', KEYS[5], 12, 11 + nc) end
if moves then
  local stem, member = ARGV[4], meta[3]
  redis.call('ZREM', stem .. status, member)
  redis.call('ZADD', stem .. new_status, 0, member)
  redis.call('ZREM', meta[4] .. status, member)
  redis.call('ZADD', meta[4] .. new_status, 0, member)
  fields[#fields + 1] = '@status'
  fields[#fields + 1] = new_status
end
if wake ~= '-' then
  -- effective_wake: a finished run never wakes; pending messages make it due now.
  local final, now, due = new_status ~= '' and new_status or status, tonumber(ARGV[9]), wake
  if TERMINAL[final] then
    due = ''
  elseif pending > 0 and (wake == '' or tonumber(wake) > now) then
    due = ARGV[9]
  end
  fields[#fields + 1] = '@wake'
  fields[#fields + 1] = due
  -- After the requested wake_at among the pairs: HSET sets its fields in order.
  if due ~= wake then
    fields[#fields + 1] = 'wake_at'
    fields[#fields + 1] = due == '' and 'null' or ARGV[10]
  end
  if due == '' then redis.call('ZREM', KEYS[6], ARGV[1]) else redis.call('ZADD', KEYS[6], due, ARGV[1]) end
end
if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
if ARGV[7] == '1' then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
end
if ARGV[6] == '1' then return {1, read_record(KEYS[1])} end
return {1}
"""
)

# KEYS: run, inbox, pending, timers
# ARGV: run_id, idempotency key ('' = none), now (µs), now as a record JSON text, message text
POST = (
    _LIB
    + """
local meta = redis.call('HMGET', KEYS[1], '@status', '@wake', '@mseq')
local status = meta[1]
if not status then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {-4, 'no @status field'} end
  return {-1}
end
if ARGV[2] ~= '' then
  local seq = redis.call('HGET', KEYS[2], 'k:' .. ARGV[2])
  if seq then return {0, seq} end
end
if TERMINAL[status] then return {-6, status} end
local seq = tonumber(meta[3] or '0')
if not seq then return {-4, '@mseq is not a number'} end
seq = string.format('%d', seq + 1)
if redis.call('HEXISTS', KEYS[2], seq) == 1 then return {-4, 'the message counter is behind the inbox'} end
local wake, now = meta[2], tonumber(ARGV[3])
if wake and wake ~= '' and not tonumber(wake) then return {-4, '@wake is not a number'} end
redis.call('ZADD', KEYS[3], seq, seq)
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[2], seq, ARGV[5], 'k:' .. ARGV[2], seq)
else
  redis.call('HSET', KEYS[2], seq, ARGV[5])
end
if wake and wake ~= '' and tonumber(wake) > now then
  redis.call('HSET', KEYS[1], '@mseq', seq, '@wake', ARGV[3], 'wake_at', ARGV[4], 'updated_at', ARGV[4])
else
  redis.call('HSET', KEYS[1], '@mseq', seq)
end
-- LT: the timer becomes min(timer, now); a missing timer is added.
redis.call('ZADD', KEYS[4], 'LT', ARGV[3], ARGV[1])
return {1, seq}
"""
)

# KEYS: inbox, pending.  ARGV: '1' every message, '0' the pending ones
MESSAGES = _LIB + "return load_messages(KEYS[1], KEYS[2], ARGV[1] == '1')\n"

# KEYS: run, events, inbox, pending, leases, lease_expiry, timers
# ARGV: run_id, "token owner", now (s), expires at (s), now (µs)
BEGIN = (
    _LIB
    + """
local meta = redis.call('HMGET', KEYS[1], '@status', '@wake')
local status = meta[1]
if not status then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {-4, 'no @status field'} end
  return {-1}
end
local record = read_record(KEYS[1])
if TERMINAL[status] then
  redis.call('ZREM', KEYS[7], ARGV[1])
  return {2, record}
end
local expires = redis.call('ZSCORE', KEYS[6], ARGV[1])
if expires and tonumber(expires) > tonumber(ARGV[3]) then return {3, record} end
local wake = tonumber(meta[2] or '')
if status == 'suspended' and wake and wake > tonumber(ARGV[5]) and redis.call('ZCARD', KEYS[4]) == 0 then
  return {4, record}
end
local items = redis.call('LRANGE', KEYS[2], 0, -1)
local messages = load_messages(KEYS[3], KEYS[4], false)
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[1])
return {1, record, #items, table.concat(items, ','), messages}
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
LIST = (
    _LIB
    + """
local members = redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
local at = tonumber(ARGV[5])
for _, member in ipairs(members) do
  local run_id = string.sub(member, at)
  out[#out + 1] = run_id
  out[#out + 1] = read_record(ARGV[4] .. run_id)
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

# KEYS: timers.  ARGV: now (µs), redeliver at (µs), limit
CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
for i = 1, #due, 2 do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], due[i]) end
return due
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


@dataclass(frozen=True)
class Scripts:
    """One client and its registered scripts (EVALSHA; loaded on the first NOSCRIPT)."""

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

    @classmethod
    def register(cls, client: Any) -> Scripts:
        sources = {
            "create": CREATE, "read": READ, "append": APPEND, "post": POST, "messages": MESSAGES,
            "begin": BEGIN, "delete": DELETE, "list": LIST, "events": EVENTS, "claim": CLAIM,
            "acquire": ACQUIRE, "renew": RENEW, "release": RELEASE, "recover": RECOVER,
        }  # fmt: skip
        return cls(client=client, **{name: client.register_script(src) for name, src in sources.items()})
