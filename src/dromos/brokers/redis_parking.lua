-- dromos on Redis: event parking for the RabbitMQ broker (docs/design/rabbitmq.md §3, §9; see
-- redis_parking.py). One script per operation, each atomic on one slot.
--
-- Every key shares the hash tag {<prefix>:amqp} (written A below), so the scripts work
-- unchanged on Redis Cluster. KEYS[1] is A:due (it routes the call); ARGV[1] is always A.
--
--   A:names           hash: '<kind>:<name>' -> JSON array of patterns (written by Python)
--   A:groups          set: the groups that have parked entries
--   A:parked:<group>  hash: key -> the entry, msgpack [topic, payload, attempt, errors JSON]
--                     (opaque here)
--   A:due             zset: '<group>\0<key>' of every retrying entry, score due (ms)
--   A:dead:<group>    zset: key of every dead entry, score when it failed (ms)
--
-- An entry is retrying (in A:due) or dead (in A:dead:<group>), never both. Times are Unix ms
-- of the server's clock (TIME).

--- common
local A = ARGV[1]
local DUE = A .. ':due'
local GROUPS = A .. ':groups'
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function parked(group) return A .. ':parked:' .. group end
local function dead(group) return A .. ':dead:' .. group end
local function forget(group, key)
  redis.call('HDEL', parked(group), key)
  redis.call('ZREM', DUE, group .. '\0' .. key)
  redis.call('ZREM', dead(group), key)
end

--- park_events
-- ARGV: A, group, then per entry: key, entry, due (ms, or '+<ms>' after now; '' for dead).
local group = ARGV[2]
local now = clock()
for i = 3, #ARGV, 3 do
  local key, entry, due = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  redis.call('HSET', parked(group), key, entry)
  if due == '' then
    redis.call('ZREM', DUE, group .. '\0' .. key)
    redis.call('ZADD', dead(group), now, key)
  else
    redis.call('ZREM', dead(group), key)
    if string.sub(due, 1, 1) == '+' then due = now + tonumber(string.sub(due, 2)) end
    redis.call('ZADD', DUE, tonumber(due), group .. '\0' .. key)
  end
end
redis.call('SADD', GROUPS, group)
return 1

--- park_due
-- ARGV: A, limit, hold (ms). Leases up to limit due entries (due = now + hold). Returns now,
-- the earliest due ahead (-1: none), then per entry: group, key, entry.
local limit, hold = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = clock()
local out = {now, -1}
if limit > 0 then
  local members = redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(members) do
    local cut = string.find(member, '\0', 1, true)
    local group, key = string.sub(member, 1, cut - 1), string.sub(member, cut + 1)
    local entry = redis.call('HGET', parked(group), key)
    if entry then
      redis.call('ZADD', DUE, now + hold, member)
      out[#out + 1] = group
      out[#out + 1] = key
      out[#out + 1] = entry
    else
      redis.call('ZREM', DUE, member)  -- its entry is gone: nothing to deliver
    end
  end
end
local first = redis.call('ZRANGEBYSCORE', DUE, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if first[2] then out[2] = tonumber(first[2]) end
return out

--- park_unpark
-- ARGV: A, group, keys...
local group = ARGV[2]
for i = 3, #ARGV do forget(group, ARGV[i]) end
if redis.call('HLEN', parked(group)) == 0 then redis.call('SREM', GROUPS, group) end
return 1

--- park_counts
-- ARGV: A. Returns per group with parked entries: group, entries, dead entries.
local out = {}
for _, group in ipairs(redis.call('SMEMBERS', GROUPS)) do
  local total = redis.call('HLEN', parked(group))
  if total == 0 then
    redis.call('SREM', GROUPS, group)
  else
    out[#out + 1] = group
    out[#out + 1] = total
    out[#out + 1] = redis.call('ZCARD', dead(group))
  end
end
return out

--- park_dead
-- ARGV: A, group, limit. Returns per dead entry, oldest failure first: key, entry, failed_at.
local group, limit = ARGV[2], tonumber(ARGV[3])
local out = {}
if limit <= 0 then return out end
local keys = redis.call('ZRANGE', dead(group), 0, limit - 1, 'WITHSCORES')
for i = 1, #keys, 2 do
  out[#out + 1] = keys[i]
  out[#out + 1] = redis.call('HGET', parked(group), keys[i]) or ''
  out[#out + 1] = keys[i + 1]
end
return out

--- park_drop
-- ARGV: A, group. Every entry of the group and its registration.
local group = ARGV[2]
for _, key in ipairs(redis.call('HKEYS', parked(group))) do
  redis.call('ZREM', DUE, group .. '\0' .. key)
end
redis.call('DEL', parked(group), dead(group))
redis.call('SREM', GROUPS, group)
redis.call('HDEL', A .. ':names', 'group:' .. group)
return 1
