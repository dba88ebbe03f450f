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
--   T:unsent     zset, relay mode only (RELAY: a store under the RabbitMQ broker, whose relay
--                publishes the ready jobs): the queued jobs not published yet, score until
--                when they are held by whoever publishes them (ms; 0: not held). A job enters
--                it wherever it becomes queued (make_ready, enqueue, a batch's callback) and
--                leaves it when published (mark_sent), leased (claim, claim_ids), cancelled or
--                withdrawn; so every member is queued
--   T:succeeded  zset / T:failed / T:cancelled: ended jobs, score expiry (ms)
--   T:all        zset: every job id with score 0, for listing newest first (ids sort by time)
--   T:idle       hash: the workers waiting for this queue's work, each under "<worker
--                name>#<its broker instance>" (a name given twice stays two entries) with
--                "room lease lapses" (jobs it can take, its lease in ms, when this entry
--                lapses, ms); written by their claim, used by enqueue to hand new jobs over
--                leased (see hand_over)
--   T:idem:<key> string: the job id an idempotency key names, expiring with its window
--   {<prefix>:__rate__:<key>}:rate  zset: one rate limit's window (dromos.rate), the starts
--                handed out by time, expiring a period after its newest (script throttle)
--   T:waiting    zset: dependents waiting for their dependencies (state scheduled, no eta),
--                score 0; no claim readies them: the end of their last dependency does
--   T:dependents:<id>  set: the dependents waiting for job <id> of this queue, each the JSON
--                array [tag, id, work channel, done channel] of the dependent (on a single
--                server a dependent may live in another queue; a Cluster refuses that);
--                deleted by the script that ends job <id>, which sets its field dependents
--
--   T:awaited    hash: job id -> how many blocking callers wait for that job's end on
--                T:notify:<id> (see await); whoever ends the job pushes its status there
--                once per waiter and deletes the field
--   T:notify:<id> list: statuses pushed for blocking callers (BLPOP), expiring a minute after
--                the last push
--
--   T:outbox     zset: jobs whose completion webhook is due, score when (ms); a job enters
--                it in the script that ends it, and leaves once delivered or given up
--   T:batch:<id> hash: one batch (task.map), under the tag of its first job's queue: id total
--                remaining succeeded failed cancelled ttl created_at finished_at jobs (the
--                ids, comma-separated) and its callback's cb_id cb_tag cb_task cb_priority
--                cb_payload cb_channel cb_url; it expires ttl after it ended.
--                A job of a batch has the field batch (this key) and, once its first end was
--                counted, batch_counted. On a Cluster the app puts every job of a batch and
--                its callback in one queue, so that all of these share one slot.
--
-- RELAY and CLUSTER are set when the scripts are loaded (redis_scripts.py), and each script
-- carries only the part of common it uses.
--
-- Job hash fields: task state priority seq payload created_at eta attempt failures recoveries
-- worker started_at finished_at expires_at progress message result errors cancel idem
-- callback (the webhook URL) webhooks (its attempts, a JSON array), and for dependencies:
-- waiting (a dependent's dependencies not ended yet) and dependents (1: some wait for this
-- job). Times are Unix ms. A new job's hash holds only what is not implied: its id and queue
-- are in its key, and attempt, failures, recoveries and progress are 0 until first written
-- (HINCRBY counts from 0; a read takes a missing one as 0). Each field is a few microseconds
-- of an enqueue's server time and about 40 bytes of memory per job: a payload over 64 bytes
-- makes the hash a hash table, not a listpack. errors is a JSON array of {type, message, traceback,
-- attempt}, appended to as text. A lease's end is its score in T:running (nowhere else).
-- Channels: <prefix>:work:<queue> (jobs became ready), <prefix>:done:<queue> (jobs ended,
-- one message per script call: a MessagePack array id, status, id, status ... where status is
-- the values of STATUS_FIELDS, or false when not carried).
--
-- The hot scripts (enqueue, settle) take their per-job values as one MessagePack array
-- (cmsgpack): one argument per batch instead of six or eight per job, which the client would
-- otherwise encode one by one. Per job they run only what is per job (a hash write, a check);
-- index updates and the push are one variadic command per batch.

--- common
local T = ARGV[1]
-- The broker's clock decides (leases, due times): a worker whose clock is off changes nothing.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function jkey(id) return T .. ':job:' .. id end
-- A due time from the client: Unix ms, or '+<ms>' after the broker's clock (a worker's
-- delay: its own clock may be off), or '' (none).
local function due(value, now)
  if string.sub(value, 1, 1) == '+' then return now + tonumber(string.sub(value, 2)) end
  return value
end
local function ready_score(prio, seq) return -tonumber(prio) * 1099511627776 + tonumber(seq) end
-- One command over many values (ZADD pairs, ZREM members), in chunks: unpack() is bounded.
local function variadic(cmd, key, items)
  for s = 1, #items, 1000 do
    redis.call(cmd, key, unpack(items, s, math.min(s + 999, #items)))
  end
end
local function append_error(jk, err)
  local errors = redis.call('HGET', jk, 'errors')
  if not errors then
    redis.call('HSET', jk, 'errors', '[' .. err .. ']')
  else
    redis.call('HSET', jk, 'errors', string.sub(errors, 1, -2) .. ',' .. err .. ']')
  end
end
local function make_ready(jk, id, tag)
  local f = redis.call('HMGET', jk, 'priority', 'seq')
  redis.call('HSET', jk, 'state', 'queued')
  redis.call('ZADD', (tag or T) .. ':ready', ready_score(f[1], f[2]), id)
  if RELAY then redis.call('ZADD', (tag or T) .. ':unsent', 0, id) end  -- ready anew: unsent
end
-- Ended jobs of this call, by end state: {state = {expires, id, ...}}; done = their ids.
local ended, done = {}, {}
-- The same for jobs of other queues this call ended (dependents, on a single server):
-- tag -> {ended = ..., done = ..., channel = that queue's done channel}.
local others = {}
-- The batch's callback gets the summary in place of its placeholder argument: every
-- occurrence, found as plain text (no pattern), as SQLite's replace() does.
local PLACEHOLDER = '"__dromos_batch_summary__"'
local function fill_summary(payload, summary)
  local out, start = {}, 1
  while true do
    local i, j = string.find(payload, PLACEHOLDER, start, true)
    if not i then break end
    out[#out + 1] = string.sub(payload, start, i - 1)
    out[#out + 1] = summary
    start = j + 1
  end
  out[#out + 1] = string.sub(payload, start)
  return table.concat(out)
end
-- The batch's last job ended: stamp it, let it expire, and queue its callback exactly as the
-- enqueue script queues a job (hash, ready, all, a push on the callback queue's channel).
-- The summary is built by hand: its keys in dromos.batch.summary_json's order.
local function complete_batch(bk, now)
  local b = redis.call('HMGET', bk, 'id', 'total', 'succeeded', 'failed', 'cancelled', 'ttl',
    'cb_id', 'cb_tag', 'cb_task', 'cb_priority', 'cb_payload', 'cb_channel', 'cb_url')
  redis.call('HSET', bk, 'finished_at', now)
  redis.call('PEXPIREAT', bk, now + tonumber(b[6]))
  local id, ct = b[7], b[8]
  if not id or redis.call('EXISTS', ct .. ':job:' .. id) == 1 then return end
  local summary = '{"batch_id":' .. cjson.encode(b[1]) .. ',"total":' .. b[2] ..
    ',"succeeded":' .. b[3] .. ',"failed":' .. b[4] .. ',"cancelled":' .. b[5] .. '}'
  local ck = ct .. ':job:' .. id
  local seq = redis.call('INCR', ct .. ':seq')
  redis.call('HSET', ck, 'task', b[9], 'state', 'queued', 'priority', b[10], 'seq', seq,
    'payload', fill_summary(b[11], summary), 'created_at', now)
  if b[13] then redis.call('HSET', ck, 'callback', b[13]) end
  redis.call('ZADD', ct .. ':ready', ready_score(b[10], seq), id)
  if RELAY then redis.call('ZADD', ct .. ':unsent', 0, id) end
  redis.call('ZADD', ct .. ':all', 0, id)
  redis.call('PUBLISH', b[12], '1')
end
-- Count a batch's job at its first end (HSETNX: a replayed job ending again is not counted).
local function count_in_batch(jk, bk, state, now)
  if redis.call('HSETNX', jk, 'batch_counted', 1) == 0 then return end
  if redis.call('EXISTS', bk) == 0 then return end
  redis.call('HINCRBY', bk, state, 1)
  if redis.call('HINCRBY', bk, 'remaining', -1) == 0 then complete_batch(bk, now) end
end
local finish  -- below: it and release() call each other, down a chain of dependents
-- A dependent leaves the waiting ones (readied, or ended while it waited).
local function stop_waiting(jk, tag, id)
  redis.call('HSET', jk, 'waiting', 0)
  redis.call('HDEL', jk, 'message')
  redis.call('ZREM', tag .. ':waiting', id)
end
local function dependency_error(dep, state)
  local kind = 'DependencyFailed'
  if state == 'cancelled' then kind = 'DependencyCancelled' end
  return cjson.encode({type = kind, message = 'dependency ' .. dep .. ' ended ' .. state,
    attempt = 0})
end
-- Job id of queue tag just ended in state: each dependent still waiting for it has one
-- dependency fewer (the last one readies it and wakes its queue), or, for a failed or
-- cancelled end, ends as it did (with the same ttl), and so on down its own dependents.
local function release(tag, id, state, now, ttl)
  local dk = tag .. ':dependents:' .. id
  local members = redis.call('SMEMBERS', dk)
  redis.call('DEL', dk)
  for _, member in ipairs(members) do
    local x = cjson.decode(member)  -- tag, id, work channel, done channel
    local xk = x[1] .. ':job:' .. x[2]
    local f = redis.call('HMGET', xk, 'state', 'waiting')
    if f[1] == 'scheduled' and tonumber(f[2] or '0') > 0 then
      if state == 'succeeded' then
        local left = redis.call('HINCRBY', xk, 'waiting', -1)
        if left > 0 then
          redis.call('HSET', xk, 'message', 'waiting for ' .. left .. ' job(s)')
        else
          stop_waiting(xk, x[1], x[2])
          make_ready(xk, x[2], x[1])
          redis.call('PUBLISH', x[3], '1')
        end
      else
        stop_waiting(xk, x[1], x[2])
        append_error(xk, dependency_error(id, state))
        local home = nil
        if x[1] ~= T then home = {x[1], x[4]} end
        finish(xk, x[2], state, now, ttl, {}, nil, nil, nil, home)
      end
    end
  end
end
-- extra: more fields of the same HSET (the result, on success). callback: whether the job
-- has a webhook URL, when the caller read it already (nil: look). batch: the job's batch
-- key, when the caller read it already (false: none; nil: look). dependents: whether jobs
-- wait for this one, likewise. home: nil for a job of this queue (T), else {tag, done
-- channel} of the job's own queue. Every end of a job goes through here, so this is where a
-- batch counts it and its dependents learn of it, in the same script.
finish = function(jk, id, state, now, ttl, extra, callback, batch, dependents, home)
  local tag, e, d = T, ended, done
  if home then
    tag = home[1]
    local other = others[tag]
    if not other then
      other = {ended = {}, done = {}, channel = home[2]}
      others[tag] = other
    end
    e, d = other.ended, other.done
  end
  local expires = now + ttl
  redis.call('HSET', jk, 'state', state, 'finished_at', now, 'expires_at', expires, unpack(extra))
  redis.call('PEXPIREAT', jk, expires)
  if callback == nil then callback = redis.call('HEXISTS', jk, 'callback') == 1 end
  if callback then redis.call('ZADD', tag .. ':outbox', now, id) end  -- the webhook's outbox
  if batch == nil then batch = redis.call('HGET', jk, 'batch') end
  if batch then count_in_batch(jk, batch, state, now) end
  local set = e[state]
  if not set then set = {}; e[state] = set end
  set[#set + 1] = expires
  set[#set + 1] = id
  d[#d + 1] = id
  if dependents == nil then dependents = redis.call('HEXISTS', jk, 'dependents') == 1 end
  if dependents then release(tag, id, state, now, ttl) end
end
-- What a waiting caller reads of an ended job (redis.py builds its status from them).
-- The reader knows the job's id and queue.
local STATUS_FIELDS = {'task', 'state', 'progress', 'message', 'attempt', 'priority', 'result',
  'errors', 'created_at', 'eta', 'started_at', 'finished_at', 'cancel'}
local STATE, RESULT = 2, 7  -- their places in STATUS_FIELDS
local CARRY_LIMIT = 65536  -- a longer result is not carried: the caller reads it
-- What a blocking caller pops for an ended job: its status as a done message carries it,
-- or 'r' (read it: the result is too long to carry).
local function notice(f)
  if f[RESULT] and #f[RESULT] > CARRY_LIMIT then return 'r' end
  return cmsgpack.pack(f)
end
local NOTIFY_TTL = 60000  -- ms a pushed status stays for a waiter that is gone
-- Push the status of each ended job of d with blocking callers waiting (T:awaited): one
-- HLEN per call while nobody waits, which is the drain's case.
local function notify_waiters(tag, d)
  local ak = tag .. ':awaited'
  if redis.call('HLEN', ak) == 0 then return end
  for s = 1, #d, 1000 do
    local ids = {unpack(d, s, math.min(s + 999, #d))}
    local counts = redis.call('HMGET', ak, unpack(ids))
    for i, n in ipairs(counts) do
      if n then
        local id = ids[i]
        local nk = tag .. ':notify:' .. id
        local v = notice(redis.call('HMGET', tag .. ':job:' .. id, unpack(STATUS_FIELDS)))
        for _ = 1, math.min(tonumber(n), 1000) do redis.call('RPUSH', nk, v) end
        redis.call('PEXPIRE', nk, NOTIFY_TTL)
        redis.call('HDEL', ak, id)
      end
    end
  end
end
-- Index the ended jobs and tell waiting callers (blocking ones first: notify_waiters), once
-- per call. The message carries each job's status, so that a caller waiting for it needs no
-- read after the push: a round trip less on every result(). On a single server nobody
-- listening means no message at all (a script runs atomically: a caller subscribing later
-- reads the ended state itself). A Cluster broadcasts messages to every node, where NUMSUB
-- sees only this node's listeners: there every call publishes, the ids only (CLUSTER is set
-- when the scripts are loaded).
local function publish_list(tag, e, d, channel)
  for state, set in pairs(e) do variadic('ZADD', tag .. ':' .. state, set) end
  if #d == 0 then return end
  notify_waiters(tag, d)
  local carry = not CLUSTER
  if carry and redis.call('PUBSUB', 'NUMSUB', channel)[2] == 0 then return end
  local msg = {}
  for _, id in ipairs(d) do
    msg[#msg + 1] = id
    local f = carry and redis.call('HMGET', tag .. ':job:' .. id, unpack(STATUS_FIELDS))
    if f and f[RESULT] and #f[RESULT] > CARRY_LIMIT then f = false end
    msg[#msg + 1] = f
  end
  redis.call('PUBLISH', channel, cmsgpack.pack(msg))
end
local function publish_ended(channel)
  publish_list(T, ended, done, channel)
  for tag, other in pairs(others) do publish_list(tag, other.ended, other.done, other.channel) end
  ended, done, others = {}, {}, {}
end
-- What every claim does first (claim, and in relay mode relay_due and claim_ids): recover the
-- runs whose worker stopped renewing its lease (WorkerLost; Poison past max_lost, ended with
-- the dead-letter ttl), tell waiting callers of those that ended, then ready due delayed and
-- retrying jobs.
local function recover_and_promote(now, max_lost, dead_ttl, done_channel)
  local expired = redis.call('ZRANGEBYSCORE', T .. ':running', '-inf', '(' .. now)
  if #expired > 0 then variadic('ZREM', T .. ':running', expired) end
  for _, id in ipairs(expired) do
    local jk = jkey(id)
    local attempt = redis.call('HGET', jk, 'attempt') or '0'
    local lost = redis.call('HINCRBY', jk, 'recoveries', 1)
    append_error(jk, '{"type":"WorkerLost","message":"the worker holding this job stopped ' ..
      'renewing its lease","attempt":' .. attempt .. '}')
    if lost > max_lost then
      append_error(jk, '{"type":"Poison","message":"the job\'s worker was lost ' .. lost ..
        ' times","attempt":' .. attempt .. '}')
      finish(jk, id, 'failed', now, dead_ttl, {})
    else
      make_ready(jk, id)
    end
  end
  publish_ended(done_channel)
  for _, set in ipairs({'scheduled', 'retrying'}) do
    local due = redis.call('ZRANGEBYSCORE', T .. ':' .. set, '-inf', now)
    if #due > 0 then variadic('ZREM', T .. ':' .. set, due) end
    for _, id in ipairs(due) do make_ready(jkey(id), id) end
  end
end
-- The earliest of a delayed job's eta, a retry's, a lease's end (ms), from due (-1: none).
local function next_due(due)
  for _, set in ipairs({'scheduled', 'retrying', 'running'}) do
    local first = redis.call('ZRANGE', T .. ':' .. set, 0, 0, 'WITHSCORES')
    if first[2] then
      local score = tonumber(first[2])
      if due < 0 or score < due then due = score end
    end
  end
  return due
end

-- An idle worker's entry in T:idle lapses this long after its last claim wrote it (a worker
-- waits at most 1 s between claims): a worker killed while idle gets jobs for this long.
local IDLE_TTL = 2000
-- Hand new ready jobs (score, id pairs; payloads by id) to the workers waiting in T:idle:
-- each is leased to a worker as its claim would lease it, and the worker learns of it from
-- one message on the work channel, {its entry, then id attempt failures payload per job}, in
-- place of a wake-up followed by a claim (a round trip less before an idle worker starts a
-- job). Only when nothing else is ready, so that no job overtakes an older or better one.
-- Returns the pairs left for T:ready.
local function hand_over(ready, payloads, now, channel)
  if #ready == 0 or RELAY or redis.call('ZCARD', T .. ':ready') > 0 then return ready end
  local idle = redis.call('HGETALL', T .. ':idle')
  if #idle == 0 then return ready end
  local order = {}
  for k = 1, #ready, 2 do order[#order + 1] = {ready[k], ready[k + 1]} end
  table.sort(order, function(a, b) return a[1] < b[1] end)
  local taken = 0
  for k = 1, #idle, 2 do
    if taken == #order then break end
    local entry = idle[k]
    local worker = string.match(entry, '^(.*)#[^#]*$') or entry
    local room, lease, lapses = string.match(idle[k + 1], '^(%d+) (%d+) (%d+)$')
    room, lease, lapses = tonumber(room), tonumber(lease), tonumber(lapses)
    if not lapses or lapses <= now then
      redis.call('HDEL', T .. ':idle', entry)
    else
      local msg, running = {entry}, {}
      while room > 0 and taken < #order do
        taken = taken + 1
        local id = order[taken][2]
        redis.call('HSET', jkey(id), 'state', 'running', 'attempt', 1, 'started_at', now,
          'worker', worker)
        running[#running + 1] = now + lease
        running[#running + 1] = id
        msg[#msg + 1] = id
        msg[#msg + 1] = 1
        msg[#msg + 1] = 0
        msg[#msg + 1] = payloads[id]
        room = room - 1
      end
      if room > 0 then
        redis.call('HSET', T .. ':idle', entry, room .. ' ' .. lease .. ' ' .. lapses)
      else
        redis.call('HDEL', T .. ':idle', entry)
      end
      if #running > 0 then
        variadic('ZADD', T .. ':running', running)
        redis.call('PUBLISH', channel, cmsgpack.pack(msg))
      end
    end
  end
  local left = {}
  for k = taken + 1, #order do
    left[#left + 1] = order[k][1]
    left[#left + 1] = order[k][2]
  end
  return left
end

--- enqueue
-- ARGV: T, work channel, then one MessagePack array of jobs, each an array:
--   id task priority eta(ms, '+<ms>' after now for a delay=, or '') payload created_at(ms)
--   idem_key('' for none) idem_window(ms)
--   callback_url ('' for none)
--   and, for a job with dependencies only, one more array: this queue's done channel, the
--   result ttl(ms), the dead-letter ttl(ms), then per dependency its tag and its id.
-- For the jobs of a batch, two more: the batch key, and the batch record to create (in the
-- first queue's call; '' in the others) as one MessagePack array: id total ttl(ms) jobs,
-- then the callback's id ('' for none) tag task priority payload channel url ('').
-- In relay mode (enqueue_unsent) a sixth: hold (ms), and the script returns 3 values per
-- job: id, publish (1: the caller publishes it, held until now + hold; 0: not), the eta of a
-- job stored scheduled (ms; -1: none). A job this call inserted queued is held for the
-- caller, and so is one of this id already stored (a retried call), while still queued and
-- unpublished. Otherwise the script returns the ids, and in relay mode its ready jobs are
-- unsent, not held (score 0).
local now = clock()
local jobs = cmsgpack.unpack(ARGV[3])
-- Dependencies are looked at before anything is written: one the broker does not know
-- (never enqueued, or its retention passed) refuses the whole call.
for _, job in ipairs(jobs) do
  local deps = job[10]
  if deps then
    for k = 4, #deps, 2 do
      if redis.call('EXISTS', deps[k] .. ':job:' .. deps[k + 1]) == 0 then
        return redis.error_reply('DROMOS_NO_DEPENDENCY ' .. deps[k + 1])
      end
    end
  end
end
local bk = ARGV[4] or ''
if ARGV[5] and ARGV[5] ~= '' and redis.call('EXISTS', bk) == 0 then
  local b = cmsgpack.unpack(ARGV[5])
  redis.call('HSET', bk, 'id', b[1], 'total', b[2], 'remaining', b[2], 'succeeded', 0,
    'failed', 0, 'cancelled', 0, 'ttl', b[3], 'jobs', b[4], 'created_at', now)
  if b[5] ~= '' then
    redis.call('HSET', bk, 'cb_id', b[5], 'cb_tag', b[6], 'cb_task', b[7], 'cb_priority', b[8],
      'cb_payload', b[9], 'cb_channel', b[10])
    if b[11] ~= '' then redis.call('HSET', bk, 'cb_url', b[11]) end
  end
end
local out, ready, scheduled, all, waiting, payloads = {}, {}, {}, {}, {}, {}
local hold, unsent, held = ARGV[6], {}, 0
if hold then held = now + tonumber(hold) end
-- enqueue_unsent's answer for an id not inserted by this call: held again if it is the same
-- job still queued and unpublished, the eta of a scheduled one.
local function recorded(id, same)
  local f = redis.call('HMGET', jkey(id), 'state', 'eta')
  local publish, due = 0, -1
  if f[1] == 'queued' and same and redis.call('ZSCORE', T .. ':unsent', id) then
    redis.call('ZADD', T .. ':unsent', held, id)
    publish = 1
  elseif f[1] == 'scheduled' and f[2] then
    due = tonumber(f[2])
  end
  out[#out + 1] = publish
  out[#out + 1] = due
end
local done_channel = nil  -- set when a job ended at once (a dependency failed already)
local seq = redis.call('INCRBY', T .. ':seq', #jobs) - #jobs
for _, job in ipairs(jobs) do
  local id, task, prio, eta, key = job[1], job[2], job[3], job[4], job[7]
  if eta ~= '' then eta = due(eta, now) end  -- a delay= counts from this clock
  local found = false
  if key ~= '' then
    local existing = redis.call('GET', T .. ':idem:' .. key)
    if existing and redis.call('EXISTS', jkey(existing)) == 1 then
      out[#out + 1] = existing
      if hold then recorded(existing, existing == id) end
      found = true
    end
  end
  if not found then
    local jk = jkey(id)
    local publish, due = 0, -1  -- enqueue_unsent's answer for a job inserted
    if redis.call('EXISTS', jk) == 1 then
      out[#out + 1] = id
      if hold then recorded(id, true) end
    else
      seq = seq + 1
      local state = 'queued'
      if eta ~= '' and tonumber(eta) > now then state = 'scheduled' end
      -- A dependent: the first dependency that failed or was cancelled (cause) ends it at
      -- once; else it waits for those not ended yet (pending: tag, id, ...), if any.
      local deps, cause, pending = job[10], nil, {}
      if deps then
        for k = 4, #deps, 2 do
          local dep = redis.call('HGET', deps[k] .. ':job:' .. deps[k + 1], 'state')
          if dep == 'failed' or dep == 'cancelled' then
            if not cause then cause = {deps[k + 1], dep} end
          elseif dep ~= 'succeeded' then
            pending[#pending + 1] = deps[k]
            pending[#pending + 1] = deps[k + 1]
          end
        end
        if cause or #pending > 0 then state, eta = 'scheduled', '' end
      end
      redis.call('HSET', jk, 'task', task, 'state', state, 'priority', prio, 'seq', seq,
        'payload', job[5], 'created_at', job[6])
      if eta ~= '' then redis.call('HSET', jk, 'eta', eta) end
      all[#all + 1] = 0
      all[#all + 1] = id
      if key ~= '' then
        redis.call('SET', T .. ':idem:' .. key, id, 'PX', job[8])
        redis.call('HSET', jk, 'idem', key)
      end
      if job[9] ~= '' then redis.call('HSET', jk, 'callback', job[9]) end
      if bk ~= '' then redis.call('HSET', jk, 'batch', bk) end
      if cause then
        append_error(jk, dependency_error(cause[1], cause[2]))
        local ttl = deps[2]
        if cause[2] == 'failed' then ttl = deps[3] end
        done_channel = deps[1]
        finish(jk, id, cause[2], now, tonumber(ttl), {}, job[9] ~= '', bk ~= '' and bk, false)
      elseif #pending > 0 then
        local n = #pending / 2
        redis.call('HSET', jk, 'waiting', n, 'message', 'waiting for ' .. n .. ' job(s)')
        waiting[#waiting + 1] = 0
        waiting[#waiting + 1] = id
        local member = cjson.encode({T, id, ARGV[2], deps[1]})
        for k = 1, #pending, 2 do
          redis.call('SADD', pending[k] .. ':dependents:' .. pending[k + 1], member)
          redis.call('HSET', pending[k] .. ':job:' .. pending[k + 1], 'dependents', 1)
        end
      elseif state == 'queued' then
        ready[#ready + 1] = ready_score(prio, seq)
        ready[#ready + 1] = id
        payloads[id] = job[5]
        if RELAY then
          unsent[#unsent + 1] = held
          unsent[#unsent + 1] = id
          publish = 1
        end
      else
        scheduled[#scheduled + 1] = tonumber(eta)
        scheduled[#scheduled + 1] = id
        due = tonumber(eta)
      end
      out[#out + 1] = id
      if hold then
        out[#out + 1] = publish
        out[#out + 1] = due
      end
    end
  end
end
ready = hand_over(ready, payloads, now, ARGV[2])
variadic('ZADD', T .. ':ready', ready)
variadic('ZADD', T .. ':scheduled', scheduled)
variadic('ZADD', T .. ':all', all)
variadic('ZADD', T .. ':waiting', waiting)
variadic('ZADD', T .. ':unsent', unsent)
if #ready > 0 then redis.call('PUBLISH', ARGV[2], '1') end
if done_channel then publish_ended(done_channel) end
return out

--- claim
-- ARGV: T, limit, lease (ms), worker, max recoveries, dead-letter ttl, done channel,
--   highest ready score to take ('+inf' for any: a priority floor when several queues compete),
--   idle entry ('' for none: a worker that listens on the work channel and serves this queue
--   only; a short claim then enters it in T:idle with the room it has left, a full one takes
--   it out)
-- Returns {due, then 4 values per job: id attempt failures payload}: due is when a claim may
-- next find work without a push (0: ready jobs may be left; else the earliest delayed job,
-- retry or lease end, in ms; -1: none), so an idle worker needs no round trip to learn it.
local now, limit = clock(), tonumber(ARGV[2])
local lease_end = now + tonumber(ARGV[3])
recover_and_promote(now, tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7])
-- Lease the best ready jobs.
local out = {-1}
if limit > 0 then
  local ids = redis.call('ZRANGEBYSCORE', T .. ':ready', '-inf', ARGV[8], 'LIMIT', 0, limit)
  if #ids > 0 then
    variadic('ZREM', T .. ':ready', ids)
    if RELAY then variadic('ZREM', T .. ':unsent', ids) end
  end
  local running = {}
  for _, id in ipairs(ids) do
    local jk = jkey(id)
    local f = redis.call('HMGET', jk, 'attempt', 'failures', 'payload')
    local attempt = tonumber(f[1] or 0) + 1
    redis.call('HSET', jk, 'state', 'running', 'attempt', attempt, 'started_at', now,
      'worker', ARGV[4])
    running[#running + 1] = lease_end
    running[#running + 1] = id
    out[#out + 1] = id
    out[#out + 1] = attempt
    out[#out + 1] = f[2] or 0
    out[#out + 1] = f[3]
  end
  variadic('ZADD', T .. ':running', running)
end
-- A full claim reports 0 without looking: the worker claims again before it would wait.
if #out > 1 and #out == 1 + 4 * limit or redis.call('ZCARD', T .. ':ready') > 0 then
  out[1] = 0
else
  out[1] = next_due(out[1])
end
if ARGV[9] and ARGV[9] ~= '' then
  local room = limit - (#out - 1) / 4
  if out[1] ~= 0 and room > 0 then
    redis.call('HSET', T .. ':idle', ARGV[9], room .. ' ' .. ARGV[3] .. ' ' .. (now + IDLE_TTL))
  else
    redis.call('HDEL', T .. ':idle', ARGV[9])
  end
end
return out

--- stop_claiming
-- ARGV: T, idle entry, work channel. Takes the entry out of T:idle, then publishes {entry}
-- alone on the work channel: once the worker reads it, every job handed to it has arrived.
redis.call('HDEL', T .. ':idle', ARGV[2])
redis.call('PUBLISH', ARGV[3], cmsgpack.pack({ARGV[2]}))
return 1

--- settle
-- ARGV: T, result ttl, dead-letter ttl, done channel, work channel, then one MessagePack
--   array of outcomes, each an array: id attempt state result error('' for none) eta(ms, or
--   '+<ms>' after now, or '')
local now = clock()
local applied, settled, retrying = 0, {}, {}
for _, o in ipairs(cmsgpack.unpack(ARGV[6])) do
  local id, attempt, state = o[1], o[2], o[3]
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'state', 'attempt', 'callback', 'batch', 'dependents')
  local callback, batch, dependents = f[3] ~= false, f[4], f[5] ~= false
  if f[1] == 'running' and f[2] == attempt then
    applied = applied + 1
    settled[#settled + 1] = id
    if o[5] ~= '' then append_error(jk, o[5]) end
    if state == 'succeeded' then
      finish(jk, id, state, now, tonumber(ARGV[2]), {'result', o[4], 'progress', 1}, callback,
        batch, dependents)
    elseif state == 'retrying' then
      local eta = due(o[6], now)
      redis.call('HINCRBY', jk, 'failures', 1)
      redis.call('HSET', jk, 'state', 'retrying', 'eta', eta)
      retrying[#retrying + 1] = tonumber(eta)
      retrying[#retrying + 1] = id
    elseif state == 'failed' then
      redis.call('HINCRBY', jk, 'failures', 1)
      finish(jk, id, state, now, tonumber(ARGV[3]), {}, callback, batch, dependents)
    else
      finish(jk, id, state, now, tonumber(ARGV[2]), {}, callback, batch, dependents)
    end
  end
end
if #settled > 0 then variadic('ZREM', T .. ':running', settled) end
if #retrying > 0 then
  variadic('ZADD', T .. ':retrying', retrying)
  redis.call('PUBLISH', ARGV[5], '1')
end
publish_ended(ARGV[4])
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
    redis.call('ZADD', T .. ':running', 'XX', lease_end, id)
    if f[3] == '1' then cancel[#cancel + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return {lost, cancel}

--- release
-- ARGV: T, work channel, eta (ms or '+<ms>' after now; '': at once), then per lease 2
--   values: id attempt
local eta = ARGV[3]
if eta ~= '' then eta = due(eta, clock()) end
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'state', 'attempt')
  if f[1] == 'running' and f[2] == ARGV[i + 1] then
    redis.call('ZREM', T .. ':running', id)
    if eta == '' then
      make_ready(jk, id)
    else  -- deferred: scheduled until eta, as a delayed job
      redis.call('HSET', jk, 'state', 'scheduled', 'eta', eta)
      redis.call('ZADD', T .. ':scheduled', eta, id)
    end
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
  if state == 'queued' then
    set = 'ready'
    if RELAY then redis.call('ZREM', T .. ':unsent', id) end
  end
  redis.call('ZREM', T .. ':' .. set, id)
  if state == 'scheduled' and tonumber(redis.call('HGET', jk, 'waiting') or '0') > 0 then
    stop_waiting(jk, T, id)
  end
  finish(jk, id, 'cancelled', now, tonumber(ARGV[3]), {})
  publish_ended(ARGV[4])
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

--- await
-- ARGV: T, id. KEYS: T:notify:<id>. A blocking caller's registration, sent in one pipeline
-- with its BLPOP of T:notify:<id>: an ended job's status is pushed at once; for a job not
-- ended yet the caller is counted in T:awaited, so that the script that ends it pushes it
-- (notify_waiters); for no such job, '' is pushed. The first waiter of a job not ended
-- clears what earlier ends pushed for waiters that left (a replayed job ends anew).
local id = ARGV[2]
local nk = KEYS[1]
local f = redis.call('HMGET', jkey(id), unpack(STATUS_FIELDS))
local state = f[STATE]
if not state or state == 'succeeded' or state == 'failed' or state == 'cancelled' then
  redis.call('RPUSH', nk, state and notice(f) or '')
  redis.call('PEXPIRE', nk, NOTIFY_TTL)
  return 0
end
if redis.call('HINCRBY', T .. ':awaited', id, 1) == 1 then redis.call('DEL', nk) end
return 1

--- unawait
-- ARGV: T, id. A blocking caller whose wait timed out is no longer counted (a status pushed
-- meanwhile stays until NOTIFY_TTL: the next waiter may take it, as it is the same end).
local ak = T .. ':awaited'
local n = redis.call('HINCRBY', ak, ARGV[2], -1)
if n <= 0 then redis.call('HDEL', ak, ARGV[2]) end
return n

--- purge
-- ARGV: T. Drops ended jobs past their retention from the indexes (their hashes expire).
local now = clock()
local gone = 0
for _, set in ipairs({'succeeded', 'failed', 'cancelled'}) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', T .. ':' .. set, '-inf', '(' .. now)) do
    redis.call('ZREM', T .. ':' .. set, id)
    redis.call('ZREM', T .. ':all', id)
    redis.call('ZREM', T .. ':outbox', id)
    redis.call('DEL', jkey(id))
    gone = gone + 1
  end
end
return gone

--- webhooks_due
-- ARGV: T, limit, lease (ms). Leases the due webhook deliveries of this queue: returns 4 values
-- per delivery: id url finished_at(ms) attempts-JSON. A job gone (retention passed) leaves.
local now = clock()
local ids = redis.call('ZRANGEBYSCORE', T .. ':outbox', '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out, leased = {}, {}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', jkey(id), 'callback', 'finished_at', 'webhooks')
  if f[1] then
    leased[#leased + 1] = now + tonumber(ARGV[3])
    leased[#leased + 1] = id
    out[#out + 1] = id
    out[#out + 1] = f[1]
    out[#out + 1] = f[2] or now
    out[#out + 1] = f[3] or '[]'
  else
    redis.call('ZREM', T .. ':outbox', id)
  end
end
variadic('ZADD', T .. ':outbox', leased)
return out

--- webhook_attempted
-- ARGV: T, id, the attempt (JSON), when to try again (ms, or '+<ms>' after now; '' for never:
--   delivered or given up).
local id = ARGV[2]
local jk = jkey(id)
if redis.call('EXISTS', jk) == 0 then
  redis.call('ZREM', T .. ':outbox', id)
  return 0
end
local hooks = redis.call('HGET', jk, 'webhooks')
if not hooks then
  redis.call('HSET', jk, 'webhooks', '[' .. ARGV[3] .. ']')
else
  redis.call('HSET', jk, 'webhooks', string.sub(hooks, 1, -2) .. ',' .. ARGV[3] .. ']')
end
if ARGV[4] == '' then
  redis.call('ZREM', T .. ':outbox', id)
else
  redis.call('ZADD', T .. ':outbox', due(ARGV[4], clock()), id)
end
return 1

--- hold_lease
-- ARGV: T, name, holder, ttl (ms). A named lease (the scheduler's): one holder until its
-- key expires. Returns false if another holds it, else when it was last taken or renewed
-- before this call, by anyone (ms; 0 if never): kept in a key of its own that does not expire.
local key = T .. ':lease:' .. ARGV[2]
local current = redis.call('GET', key)
if current and current ~= ARGV[3] then return false end
redis.call('SET', key, ARGV[3], 'PX', ARGV[4])
local seen = redis.call('GET', key .. ':seen') or '0'
redis.call('SET', key .. ':seen', clock())
return seen

--- drop_lease
-- ARGV: T, name, holder. Deletes the lease if the holder holds it (its ":seen" stays).
local key = T .. ':lease:' .. ARGV[2]
if redis.call('GET', key) == ARGV[3] then redis.call('DEL', key) end
return 1

--- throttle
-- ARGV: T, limit, period (ms), hold (ms; '': no bound). One rate-limit key's sliding-window
-- log (dromos.rate): a sorted set of its starts by time (reservations may lie ahead),
-- members from a counter. Reserves the next start (dromos.rate.next_start) if at most hold
-- away, and returns the ms until it.
local key = T .. ':rate'
local now, limit, period = clock(), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
local at = now
if redis.call('ZCARD', key) >= limit then
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local nth = redis.call('ZRANGE', key, -limit, -limit, 'WITHSCORES')
  at = math.max(now, tonumber(last[2]), tonumber(nth[2]) + period)
end
if ARGV[4] ~= '' and at - now > tonumber(ARGV[4]) then return at - now end
redis.call('ZADD', key, at, redis.call('INCR', key .. ':n'))
redis.call('PEXPIREAT', key, at + period)  -- the log is empty once its newest start is out
redis.call('PEXPIREAT', key .. ':n', at + period)
return at - now

-- Relay mode (a store under the RabbitMQ broker, docs/design/rabbitmq.md §3): RabbitMQ carries
-- "job X is ready now", this store keeps the job. T:unsent holds the queued jobs nobody
-- published yet; these scripts are the store's side of the relay.

--- relay_due
-- ARGV: T, limit, hold (ms), max recoveries, dead-letter ttl, done channel. First what a claim
-- does first (recover lost leases, ready due jobs), then hold for the caller up to limit
-- queued jobs neither published nor held (score 0 or a hold ended), in ready order (priority,
-- then seq): their score becomes now + hold. Returns {now, due, then 3 values per job: id
-- priority payload}, where due is when this queue next has something to relay (ms: now when
-- more are waiting; else the earliest eta, lease end or hold end ahead; -1: none).
local now, limit = clock(), tonumber(ARGV[2])
recover_and_promote(now, tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6])
local key = T .. ':unsent'
local candidates, stale = {}, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', now)) do
  local score = redis.call('ZSCORE', T .. ':ready', id)
  if score then
    candidates[#candidates + 1] = {tonumber(score), id}
  else
    stale[#stale + 1] = id  -- not queued (cannot happen: every path that unreadies removes it)
  end
end
if #stale > 0 then variadic('ZREM', key, stale) end
table.sort(candidates, function(a, b) return a[1] < b[1] end)
local until_ = now + tonumber(ARGV[3])
local out, held = {now, -1}, {}
for i = 1, math.min(limit, #candidates) do
  local id = candidates[i][2]
  local f = redis.call('HMGET', jkey(id), 'priority', 'payload')
  held[#held + 1] = until_
  held[#held + 1] = id
  out[#out + 1] = id
  out[#out + 1] = f[1]
  out[#out + 1] = f[2]
end
variadic('ZADD', key, held)
if #candidates > limit then
  out[2] = now  -- more to take at once
else
  local due = next_due(-1)
  local first = redis.call('ZRANGEBYSCORE', key, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if first[2] and (due < 0 or tonumber(first[2]) < due) then due = tonumber(first[2]) end
  if #held > 0 and (due < 0 or until_ < due) then due = until_ end
  out[2] = due
end
return out

--- relay_unhold
-- ARGV: T, the hold's end (ms) a relay_due set, then ids: those still held by it are unsent
-- again (score 0), for the next pass (relay_due took more across queues than its limit).
local key = T .. ':unsent'
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', key, ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[2]) then redis.call('ZADD', key, 0, ARGV[i]) end
end
return 0

--- mark_sent
-- ARGV: T, then ids: published, so no relay takes them again. Only a held job is marked (the
-- enqueuer or a relay held it before publishing): one readied anew since (score 0: released,
-- recovered) waits for the relay, as a late mark must not swallow its new readiness.
local key = T .. ':unsent'
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', key, ARGV[i])
  if score and tonumber(score) > 0 then redis.call('ZREM', key, ARGV[i]) end
end
return 0

--- claim_ids
-- ARGV: T, lease (ms), worker, max recoveries, dead-letter ttl, done channel, then ids. First
-- what a claim does first (a lost lease's job is queued again, or dead: Poison; due jobs are
-- readied), then each queued job is leased as claim leases it. Returns 4 values per id:
-- 'leased' attempt failures payload; or its state (not claimable) or 'missing', 0, 0, ''.
local now = clock()
recover_and_promote(now, tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6])
local lease_end = now + tonumber(ARGV[2])
local out, leased, running = {}, {}, {}
for i = 7, #ARGV do
  local id = ARGV[i]
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'state', 'attempt', 'failures', 'payload')
  if f[1] == 'queued' then
    local attempt = tonumber(f[2] or 0) + 1
    redis.call('HSET', jk, 'state', 'running', 'attempt', attempt, 'started_at', now,
      'worker', ARGV[3])
    leased[#leased + 1] = id
    running[#running + 1] = lease_end
    running[#running + 1] = id
    out[#out + 1] = 'leased'
    out[#out + 1] = attempt
    out[#out + 1] = f[3] or 0
    out[#out + 1] = f[4]
  else
    out[#out + 1] = f[1] or 'missing'
    out[#out + 1] = 0
    out[#out + 1] = 0
    out[#out + 1] = ''
  end
end
if #leased > 0 then
  variadic('ZREM', T .. ':ready', leased)
  variadic('ZREM', T .. ':unsent', leased)
  variadic('ZADD', T .. ':running', running)
end
return out

--- withdraw
-- ARGV: T, result ttl, done channel, the error (JSON), then ids. Those still queued and not
-- published (in T:unsent) end cancelled with the error, as cancel ends them (finish), and
-- their idempotency keys are freed (if they still name them).
local now = clock()
for i = 5, #ARGV do
  local id = ARGV[i]
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'state', 'idem')
  if f[1] == 'queued' and redis.call('ZSCORE', T .. ':unsent', id) then
    redis.call('ZREM', T .. ':ready', id)
    redis.call('ZREM', T .. ':unsent', id)
    append_error(jk, ARGV[4])
    if f[2] then
      local ik = T .. ':idem:' .. f[2]
      if redis.call('GET', ik) == id then redis.call('DEL', ik) end
    end
    finish(jk, id, 'cancelled', now, tonumber(ARGV[2]), {})
  end
end
publish_ended(ARGV[3])
return 0
