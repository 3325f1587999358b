"""The Lua scripts of taskq's Redis transport (``taskq/transports/redis.py``).

Keys, all under the connection's ``global_keyprefix`` P (callers pass full key names):

    P<queue>, P<queue><sep><step>   kombu's queue lists: LPUSHed by publishers, consumed from
                                    the right (the step lists hold prioritised messages)
    P taskq:leases                  sorted set: lease id -> deadline, in ms of the Redis clock
    P taskq:leased                  hash: lease id -> message as published,
                                          lease id .. ':q' -> the list the message came from
    P taskq:expired                 sorted set: lease id -> when RESTORE put its message back
                                    (kept ``EXPIRED_KEPT_MS``): how a consumer whose ack's
                                    reply was lost tells "acked" from "expired" afterwards

A lease id is ``<consumer id>:<batch, 10 digits>:<n, 6 digits>``: unique, so a stale ack or
renewal can never touch a lease someone else took later, and ids with one deadline sort in
fetch order (restores keep that order). Deadlines come from the Redis server's clock, so
consumers on hosts whose clocks disagree still agree on which leases expired.

Every script is atomic: at any moment a message is in exactly one place, its list or a
lease. Needs Redis >= 6.2 (RPOP with a count, ZADD GT, ZRANGE BYSCORE, BLMOVE).
"""

from __future__ import annotations

#: How long RESTORE remembers an expired lease's id: a consumer whose ack lost its reply and
#: that reconnects later than this takes the ack as applied (the task runs there) even if the
#: lease had expired (another consumer may run it too).
EXPIRED_KEPT_MS = 3_600_000

_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Marks a requeued message redelivered the way kombu does (delivery_info.redelivered) without
# decoding it: cjson in Redis < 7.2 turns empty arrays into objects, and bodies can be large.
# kombu writes its envelopes with json.dumps' default separators; the last '"delivery_info": {'
# is the one in the properties (inside a JSON string the quotes would be escaped). A message
# in another layout is requeued unchanged.
_REDELIVERED = """
local function redelivered(item)
  local pattern = '"delivery_info": {'
  local at, from = nil, 1
  while true do
    local i = string.find(item, pattern, from, true)
    if not i then break end
    at, from = i, i + 1
  end
  if not at then return item end
  local cut = at + #pattern - 1
  local flag = '"redelivered": true'
  if string.sub(item, cut + 1, cut + #flag) == flag then return item end
  local sep = ', '
  if string.sub(item, cut + 1, cut + 1) == '}' then sep = '' end
  return string.sub(item, 1, cut) .. flag .. sep .. string.sub(item, cut + 1)
end
"""

#: Acks the leases ARGV[5..] (deferred acks ride along with the next fetch: one round trip),
#: then pops up to ARGV[1] messages from the lists KEYS[3..], in that order, and leases each
#: for ARGV[2] ms under the id ARGV[3] .. n (n counts the leased ones); ARGV[4] has one
#: letter per list, 'N' for a no-ack consumer's list (popped without a lease). KEYS[1]
#: leases, KEYS[2] leased.
#: Returns a flat array: how many of the acked leases were gone, then per message its list
#: number (1-based), its lease id ('' without a lease) and the message.
#:
#: The same call twice (redis-py sends a command again on a new connection when the reply
#: was lost with the old one) returns what the first call leased and pops nothing more: the
#: first call's messages would otherwise sit unseen until their leases ran out, and a second
#: pop would reuse their lease ids.
FETCH = _NOW + """
local gone = 0
for i = 5, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 0 then gone = gone + 1 end
  redis.call('HDEL', KEYS[2], ARGV[i], ARGV[i] .. ':q')
end
local limit = tonumber(ARGV[1])
local deadline = now_ms() + tonumber(ARGV[2])
local out, n, leases = {gone}, 0, 0
if redis.call('HEXISTS', KEYS[2], ARGV[3] .. string.format('%06d', 1)) == 1 then
  local lists = {}
  for k = 3, #KEYS do lists[KEYS[k]] = k - 2 end
  for m = 1, limit do
    local id = ARGV[3] .. string.format('%06d', m)
    local v = redis.call('HMGET', KEYS[2], id, id .. ':q')
    if v[1] and v[2] and lists[v[2]] then
      redis.call('ZADD', KEYS[1], 'XX', deadline, id)
      out[#out + 1] = lists[v[2]]
      out[#out + 1] = id
      out[#out + 1] = v[1]
    end
  end
  return out
end
for k = 3, #KEYS do
  if n >= limit then break end
  local items = redis.call('RPOP', KEYS[k], limit - n)
  if items then
    local leased = string.sub(ARGV[4], k - 2, k - 2) ~= 'N'
    for _, item in ipairs(items) do
      n = n + 1
      local id = ''
      if leased then
        leases = leases + 1  -- numbered apart from no-ack messages: the first is always 1
        id = ARGV[3] .. string.format('%06d', leases)
        redis.call('ZADD', KEYS[1], deadline, id)
        redis.call('HSET', KEYS[2], id, item, id .. ':q', KEYS[k])
      end
      out[#out + 1] = k - 2
      out[#out + 1] = id
      out[#out + 1] = item
    end
  end
end
return out
"""

#: Ends the leases ARGV[2..]. 'ack' deletes the message; 'requeue' puts it back where it is
#: consumed next, marked redelivered, keeping the order of the ids (as AMQP's requeue puts a
#: message back in its place). A lease that is gone (it expired and was restored, maybe to
#: someone else by now) is left alone. KEYS[1] leases, KEYS[2] leased, KEYS[3] expired.
#: Returns 1 or 0 per id, in order: whether the lease was still held. 'confirm' acks as 'ack'
#: does, for acks whose earlier sending lost its reply; for a lease that is gone it returns
#: 0 when that earlier ack was applied and 2 when the lease expired instead (its message went
#: back to its queue).
SETTLE = _REDELIVERED + """
local requeue = ARGV[1] == 'requeue'
local confirm = ARGV[1] == 'confirm'
local held = {}
-- RPUSH the last id first, so that the first id ends up consumed first.
for i = #ARGV, 2, -1 do
  local id = ARGV[i]
  local ok = redis.call('ZREM', KEYS[1], id)
  if ok == 1 and requeue then
    local v = redis.call('HMGET', KEYS[2], id, id .. ':q')
    if v[1] and v[2] then redis.call('RPUSH', v[2], redelivered(v[1])) end
  end
  redis.call('HDEL', KEYS[2], id, id .. ':q')
  if ok == 0 and confirm and redis.call('ZSCORE', KEYS[3], id) then ok = 2 end
  held[i - 1] = ok
end
return held
"""

#: Extends the leases ARGV[2..] to ARGV[1] ms from now; never revives one that is gone.
#: KEYS[1] leases. Returns the ids that are gone.
RENEW = _NOW + """
local deadline = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[1], 'XX', 'GT', 'CH', deadline, ARGV[i]) == 0 then
    if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then lost[#lost + 1] = ARGV[i] end
  end
end
return lost
"""

#: Moves up to ARGV[1] messages whose lease deadline has passed back to the head of their
#: list (consumed next, in fetch order), marked redelivered, and remembers their lease ids
#: for ARGV[2] ms (see SETTLE's 'confirm'). KEYS[1] leases, KEYS[2] leased, KEYS[3] expired.
#: Returns how many it moved.
RESTORE = _NOW + _REDELIVERED + """
local now = now_ms()
local ids = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE',
                       'LIMIT', 0, tonumber(ARGV[1]))
for i = #ids, 1, -1 do
  local id = ids[i]
  local v = redis.call('HMGET', KEYS[2], id, id .. ':q')
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id, id .. ':q')
  if v[1] and v[2] then redis.call('RPUSH', v[2], redelivered(v[1])) end
  redis.call('ZADD', KEYS[3], now, id)
end
if #ids > 0 then
  local kept = tonumber(ARGV[2])
  -- a bounded trim per call: after a mass expiry an hour ago, no single call removes all
  local old = redis.call('ZRANGE', KEYS[3], '-inf', now - kept, 'BYSCORE', 'LIMIT', 0, 1000)
  if #old > 0 then redis.call('ZREM', KEYS[3], unpack(old)) end
  redis.call('PEXPIRE', KEYS[3], kept)
end
return #ids
"""

#: Publishes ARGV[2] (a message as kombu's ``_put`` writes it) if the exchange's binding table
#: KEYS[1] is the one the message was routed with, whose fingerprint is ARGV[1] (see
#: ``redis_publish.fingerprint``): LPUSH on KEYS[2..ARGV[3]+1], then PEXPIRE each further
#: key by its ARGV[4..] ms (queues declared with x-expires). Returns 1 when published,
#: else the table's members (nothing written): the caller routes again and retries.
#: A binding lookup and the push in one round trip, atomically (kombu does SMEMBERS, then
#: LPUSH: a queue bound or unbound in between is missed or still written to).
PUBLISH = """
local members = redis.call('SMEMBERS', KEYS[1])
table.sort(members)
local parts = {}
for i, m in ipairs(members) do parts[i] = #m .. ':' .. m end
if redis.sha1hex(table.concat(parts)) ~= ARGV[1] then return members end
local n = tonumber(ARGV[3])
for i = 2, n + 1 do redis.call('LPUSH', KEYS[i], ARGV[2]) end
for i = n + 2, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[i - n + 2]) end
return 1
"""
