"""The Lua scripts of taskq's Redis transport. Each runs atomically on the server and takes
its clock from ``TIME``, so clients with skewed clocks agree on every lease deadline.

Keys (all under the connection's ``global_keyprefix``):
  taskq.leases     HASH  delivery tag -> JSON [queue key, raw message]
  taskq.deadlines  ZSET  delivery tag -> lease deadline (ms, server time)
  taskq.inflight.<consumer>.<queue key>  LIST  what BLMOVE took, not yet leased
  taskq.inflights  SET   "<consumer>\\t<queue key>" of every inflight list
  taskq.alive.<consumer>  STRING with a TTL of one lease: the consumer is alive
"""

from __future__ import annotations

_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function redelivered(raw)
  local ok, msg = pcall(cjson.decode, raw)
  if not ok or type(msg) ~= 'table' then return raw end
  if type(msg.headers) == 'table' then msg.headers.redelivered = true end
  if type(msg.properties) == 'table' and type(msg.properties.delivery_info) == 'table' then
    msg.properties.delivery_info.redelivered = true
  end
  return cjson.encode(msg)
end
"""

# KEYS: leases, deadlines, alive, inflight ('' when none)
# ARGV: lease_ms, max_n, inflight queue key, queue keys...
FETCH = _COMMON + """
local deadline = now_ms() + tonumber(ARGV[1])
local max_n = tonumber(ARGV[2])
local out = {}
local n = 0
local function lease(qkey, raw)
  local ok, msg = pcall(cjson.decode, raw)
  local tag = nil
  if ok and type(msg) == 'table' and type(msg.properties) == 'table' then
    tag = msg.properties.delivery_tag
  end
  if type(tag) ~= 'string' then
    tag = 'taskq-' .. tostring(deadline) .. '-' .. tostring(n) .. '-' .. redis.sha1hex(raw)
  end
  redis.call('HSET', KEYS[1], tag, cjson.encode({qkey, raw}))
  redis.call('ZADD', KEYS[2], deadline, tag)
  out[#out + 1] = qkey
  out[#out + 1] = raw
  out[#out + 1] = tag
  n = n + 1
end
if KEYS[4] ~= '' then
  while true do
    local raw = redis.call('RPOP', KEYS[4])
    if not raw then break end
    lease(ARGV[3], raw)
  end
end
for i = 4, #ARGV do
  while n < max_n do
    local raw = redis.call('RPOP', ARGV[i])
    if not raw then break end
    lease(ARGV[i], raw)
  end
end
redis.call('SET', KEYS[3], '1', 'PX', tonumber(ARGV[1]))
return out
"""

# KEYS: leases, deadlines, alive    ARGV: lease_ms, tags...
RENEW = _COMMON + """
local deadline = now_ms() + tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[2], 'XX', 'CH', deadline, ARGV[i])
end
redis.call('SET', KEYS[3], '1', 'PX', tonumber(ARGV[1]))
return renewed
"""

# KEYS: leases, deadlines    ARGV: tag, requeue (1/0)
SETTLE = _COMMON + """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if entry and ARGV[2] == '1' then
  local e = cjson.decode(entry)
  redis.call('RPUSH', e[1], redelivered(e[2]))
  return 1
end
if entry then return 1 end
return 0
"""

# KEYS: leases, deadlines, inflights    ARGV: max_n, prefix
RESTORE = _COMMON + """
local now = now_ms()
local restored = 0
local tags = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, tag in ipairs(tags) do
  local entry = redis.call('HGET', KEYS[1], tag)
  redis.call('HDEL', KEYS[1], tag)
  redis.call('ZREM', KEYS[2], tag)
  if entry then
    local e = cjson.decode(entry)
    redis.call('RPUSH', e[1], redelivered(e[2]))
    restored = restored + 1
  end
end
for _, member in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local tab = string.find(member, '\\t', 1, true)
  local consumer = string.sub(member, 1, tab - 1)
  local qkey = string.sub(member, tab + 1)
  if redis.call('EXISTS', ARGV[2] .. 'taskq.alive.' .. consumer) == 0 then
    local inflight = ARGV[2] .. 'taskq.inflight.' .. consumer .. '.' .. qkey
    while true do
      local raw = redis.call('RPOP', inflight)
      if not raw then break end
      redis.call('RPUSH', qkey, redelivered(raw))
      restored = restored + 1
    end
    redis.call('SREM', KEYS[3], member)
  end
end
return restored
"""

# KEYS: alive, inflights    ARGV: lease_ms, members...
REGISTER = """
redis.call('SET', KEYS[1], '1', 'PX', tonumber(ARGV[1]))
for i = 2, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
return 1
"""
