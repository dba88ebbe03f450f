-- dromos on Redis: one script per broker operation, each run atomically on one queue.
--
-- Every key of a queue shares the hash tag {<prefix>:<queue>} (written T below), so a script
-- only touches keys of one slot and works unchanged on Redis Cluster. ARGV[1] is always T.
--
--   T:seq        counter: enqueue order within the queue
--   T:job:<id>   hash: one job (fields below); gets a PEXPIREAT when it ends
--   T:ready      zset: queued jobs, score -priority * 2^40 + seq (lowest first)
--   T:scheduled  zset: delayed jobs, score eta (ms)
--   T:retrying   zset: jobs waiting for their next attempt, score eta (ms)
--   T:running    zset: leased jobs, score lease end (ms)
--   T:succeeded  zset / T:failed / T:cancelled: ended jobs, score expiry (ms)
--   T:all        zset: every job id with score 0, for listing newest first (ids sort by time)
--   T:idem:<key> string: the job id an idempotency key names, expiring with its window
--
-- Job hash fields: id task queue state priority seq payload created_at eta attempt failures
-- recoveries lease_until worker started_at finished_at progress message result errors
-- cancel idem. Times are Unix milliseconds. errors is a JSON array of
-- {type, message, traceback, attempt}, appended to as text.
-- Channels: <prefix>:work:<queue> (jobs became ready), <prefix>:done:<id> (job ended).

--- common
local T = ARGV[1]
-- The broker's clock decides (leases, due times): a worker whose clock is off changes nothing.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function jkey(id) return T .. ':job:' .. id end
local function ready_score(prio, seq) return -tonumber(prio) * 1099511627776 + tonumber(seq) end
local function append_error(jk, err)
  local errors = redis.call('HGET', jk, 'errors')
  if not errors then
    redis.call('HSET', jk, 'errors', '[' .. err .. ']')
  else
    redis.call('HSET', jk, 'errors', string.sub(errors, 1, -2) .. ',' .. err .. ']')
  end
end
local function make_ready(jk, id)
  local f = redis.call('HMGET', jk, 'priority', 'seq')
  redis.call('HSET', jk, 'state', 'queued')
  redis.call('ZADD', T .. ':ready', ready_score(f[1], f[2]), id)
end
local function finish(jk, id, state, now, ttl, channel)
  local expires = now + ttl
  redis.call('HSET', jk, 'state', state, 'finished_at', now, 'expires_at', expires)
  redis.call('HDEL', jk, 'lease_until')
  redis.call('ZADD', T .. ':' .. state, expires, id)
  redis.call('PEXPIREAT', jk, expires)
  redis.call('PUBLISH', channel .. id, state)
end

--- enqueue
-- ARGV: T, work channel, queue, then per job 8 values:
--   id task priority eta(ms or '') payload created_at idem_key('' for none) idem_window(ms)
local now = clock()
local out = {}
local woken = false
for i = 4, #ARGV, 8 do
  local id, task, prio, eta = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key = ARGV[i + 6]
  local found = false
  if key ~= '' then
    local existing = redis.call('GET', T .. ':idem:' .. key)
    if existing and redis.call('EXISTS', jkey(existing)) == 1 then
      out[#out + 1] = existing
      found = true
    end
  end
  if not found then
    local jk = jkey(id)
    if redis.call('EXISTS', jk) == 0 then
      local seq = redis.call('INCR', T .. ':seq')
      local state = 'queued'
      if eta ~= '' and tonumber(eta) > now then state = 'scheduled' end
      redis.call('HSET', jk, 'id', id, 'task', task, 'queue', ARGV[3], 'state', state,
        'priority', prio, 'seq', seq, 'payload', ARGV[i + 4], 'created_at', ARGV[i + 5],
        'attempt', 0, 'failures', 0, 'recoveries', 0, 'progress', 0)
      if eta ~= '' then redis.call('HSET', jk, 'eta', eta) end
      if state == 'queued' then
        redis.call('ZADD', T .. ':ready', ready_score(prio, seq), id)
        woken = true
      else
        redis.call('ZADD', T .. ':scheduled', tonumber(eta), id)
      end
      redis.call('ZADD', T .. ':all', 0, id)
      if key ~= '' then
        redis.call('SET', T .. ':idem:' .. key, id, 'PX', ARGV[i + 7])
        redis.call('HSET', jk, 'idem', key)
      end
    end
    out[#out + 1] = id
  end
end
if woken then redis.call('PUBLISH', ARGV[2], '1') end
return out

--- claim
-- ARGV: T, limit, lease (ms), worker, max recoveries, dead-letter ttl, done channel,
--   highest ready score to take ('+inf' for any: a priority floor when several queues compete)
local now, limit = clock(), tonumber(ARGV[2])
local lease_end = now + tonumber(ARGV[3])
-- Recover runs whose worker stopped renewing its lease.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', T .. ':running', '-inf', '(' .. now)) do
  local jk = jkey(id)
  redis.call('ZREM', T .. ':running', id)
  local attempt = redis.call('HGET', jk, 'attempt') or '0'
  local lost = redis.call('HINCRBY', jk, 'recoveries', 1)
  redis.call('HDEL', jk, 'lease_until')
  append_error(jk, '{"type":"WorkerLost","message":"the worker holding this job stopped ' ..
    'renewing its lease","attempt":' .. attempt .. '}')
  if lost > tonumber(ARGV[5]) then
    append_error(jk, '{"type":"Poison","message":"the job\'s worker was lost ' .. lost ..
      ' times","attempt":' .. attempt .. '}')
    finish(jk, id, 'failed', now, tonumber(ARGV[6]), ARGV[7])
  else
    make_ready(jk, id)
  end
end
-- Promote due delayed and retrying jobs.
for _, set in ipairs({'scheduled', 'retrying'}) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', T .. ':' .. set, '-inf', now)) do
    redis.call('ZREM', T .. ':' .. set, id)
    make_ready(jkey(id), id)
  end
end
-- Lease the best ready jobs.
local out = {}
if limit > 0 then
  local ids = redis.call('ZRANGEBYSCORE', T .. ':ready', '-inf', ARGV[8], 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local jk = jkey(id)
    redis.call('ZREM', T .. ':ready', id)
    local attempt = redis.call('HINCRBY', jk, 'attempt', 1)
    redis.call('HSET', jk, 'state', 'running', 'lease_until', lease_end, 'started_at', now,
      'worker', ARGV[4])
    redis.call('ZADD', T .. ':running', lease_end, id)
    local f = redis.call('HMGET', jk, 'failures', 'payload')
    out[#out + 1] = id
    out[#out + 1] = attempt
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
  end
end
return out

--- settle
-- ARGV: T, result ttl, dead-letter ttl, done channel, work channel,
--   then per outcome 6 values: id attempt state result error('' for none) eta(ms or '')
local now = clock()
local applied = 0
for i = 6, #ARGV, 6 do
  local id, attempt, state = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'state', 'attempt')
  if f[1] == 'running' and f[2] == attempt then
    applied = applied + 1
    redis.call('ZREM', T .. ':running', id)
    if ARGV[i + 4] ~= '' then append_error(jk, ARGV[i + 4]) end
    if state == 'succeeded' then
      redis.call('HSET', jk, 'result', ARGV[i + 3], 'progress', 1)
      finish(jk, id, state, now, tonumber(ARGV[2]), ARGV[4])
    elseif state == 'retrying' then
      redis.call('HINCRBY', jk, 'failures', 1)
      redis.call('HSET', jk, 'state', 'retrying', 'eta', ARGV[i + 5])
      redis.call('HDEL', jk, 'lease_until')
      redis.call('ZADD', T .. ':retrying', tonumber(ARGV[i + 5]), id)
      redis.call('PUBLISH', ARGV[5], '1')
    elseif state == 'failed' then
      redis.call('HINCRBY', jk, 'failures', 1)
      finish(jk, id, state, now, tonumber(ARGV[3]), ARGV[4])
    else
      finish(jk, id, state, now, tonumber(ARGV[2]), ARGV[4])
    end
  end
end
return applied

--- extend
-- ARGV: T, lease (ms), then per lease 2 values: id attempt. Returns {lost ids, cancel ids}.
local lease_end = clock() + tonumber(ARGV[2])
local lost, cancel = {}, {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'state', 'attempt', 'cancel')
  if f[1] == 'running' and f[2] == ARGV[i + 1] then
    redis.call('HSET', jk, 'lease_until', lease_end)
    redis.call('ZADD', T .. ':running', 'XX', lease_end, id)
    if f[3] == '1' then cancel[#cancel + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return {lost, cancel}

--- release
-- ARGV: T, work channel, then per lease 2 values: id attempt
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'state', 'attempt')
  if f[1] == 'running' and f[2] == ARGV[i + 1] then
    redis.call('ZREM', T .. ':running', id)
    redis.call('HDEL', jk, 'lease_until')
    make_ready(jk, id)
  end
end
redis.call('PUBLISH', ARGV[2], '1')
return 0

--- progress
-- ARGV: T, then per update 4 values: id attempt progress message ('\0' for none)
for i = 2, #ARGV, 4 do
  local jk = jkey(ARGV[i])
  local f = redis.call('HMGET', jk, 'state', 'attempt')
  if f[1] == 'running' and f[2] == ARGV[i + 1] then
    redis.call('HSET', jk, 'progress', ARGV[i + 2])
    if ARGV[i + 3] == '\0' then
      redis.call('HDEL', jk, 'message')
    else
      redis.call('HSET', jk, 'message', ARGV[i + 3])
    end
  end
end
return 0

--- cancel
-- ARGV: T, id, result ttl, done channel. Returns the state left, or false if there is none.
local id, now = ARGV[2], clock()
local jk = jkey(id)
local state = redis.call('HGET', jk, 'state')
if not state then return false end
if state == 'scheduled' or state == 'queued' or state == 'retrying' then
  local set = state
  if state == 'queued' then set = 'ready' end
  redis.call('ZREM', T .. ':' .. set, id)
  finish(jk, id, 'cancelled', now, tonumber(ARGV[3]), ARGV[4])
  return 'cancelled'
end
if state == 'running' then redis.call('HSET', jk, 'cancel', '1') end
return state

--- replay
-- ARGV: T, work channel, then ids (none: every dead letter of the queue). Returns moved ids.
local ids = {}
if #ARGV == 2 then
  ids = redis.call('ZRANGE', T .. ':failed', 0, -1)
else
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local moved = {}
for _, id in ipairs(ids) do
  local jk = jkey(id)
  if redis.call('HGET', jk, 'state') == 'failed' then
    redis.call('ZREM', T .. ':failed', id)
    redis.call('PERSIST', jk)
    redis.call('HSET', jk, 'failures', 0, 'recoveries', 0, 'progress', 0)
    redis.call('HDEL', jk, 'finished_at', 'expires_at', 'message', 'eta')
    make_ready(jk, id)
    moved[#moved + 1] = id
  end
end
if #moved > 0 then redis.call('PUBLISH', ARGV[2], '1') end
return moved

--- purge
-- ARGV: T. Drops ended jobs past their retention from the indexes (their hashes expire).
local now = clock()
local gone = 0
for _, set in ipairs({'succeeded', 'failed', 'cancelled'}) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', T .. ':' .. set, '-inf', '(' .. now)) do
    redis.call('ZREM', T .. ':' .. set, id)
    redis.call('ZREM', T .. ':all', id)
    redis.call('DEL', jkey(id))
    gone = gone + 1
  end
end
return gone
