-- dromos on Redis: the event bus. One script per operation, each run atomically on one slot.
--
-- Every key of the bus shares the hash tag {<prefix>:events} (written E below), so a script
-- only touches keys of one slot and works unchanged on Redis Cluster. KEYS[1] is E:log (it
-- routes the call); ARGV[1] is always E.
--
--   E:log                   stream: the log, one entry per event, fields t (topic) and p
--                           (payload: the CloudEvents JSON); trimmed by time (MINID)
--   E:groups                hash: group -> JSON array of its patterns
--   E:read                  hash: group -> entries ever added up to its position (for its lag)
--   E:g:<group>:running     zset: entries leased to a consumer, score lease end (ms)
--   E:g:<group>:retrying    zset: entries waiting for their next delivery, score due (ms)
--   E:g:<group>:dead        zset: dead-lettered entries, score when they failed (ms)
--   E:g:<group>:attempt     hash: entry id -> deliveries so far (the fencing token; a replay
--                           does not restart it)
--   E:g:<group>:base        hash: entry id -> its attempt when last replayed (none: 0); a
--                           delivery's tries, the retry budget used, are attempt - base
--   E:g:<group>:recoveries  hash: entry id -> lease expiries so far
--   E:g:<group>:errors      hash: entry id -> JSON array of JobError, appended to as text
--
-- A group's position is a consumer group of the stream (one consumer, "dromos"): XREADGROUP
-- moves it past every entry it reads, matching or not; the entries the group takes stay
-- pending there until acknowledged or dead-lettered, those it passes over are acknowledged at
-- once. An entry is in at most one of running / retrying / dead of a group. Times are Unix ms
-- of the server's clock (TIME). Channel: <prefix>:events, published when a claim may find
-- something new (events appended, a retry scheduled, dead letters replayed).

--- common
local E = ARGV[1]
local LOG = E .. ':log'
local GROUPS = E .. ':groups'
local READ = E .. ':read'
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The keys of one group's events in flight.
local function gkeys(group)
  local g = E .. ':g:' .. group .. ':'
  return {running = g .. 'running', retrying = g .. 'retrying', dead = g .. 'dead',
    attempt = g .. 'attempt', recoveries = g .. 'recoveries', errors = g .. 'errors',
    base = g .. 'base'}
end
local function append_error(k, id, err)
  local errors = redis.call('HGET', k.errors, id)
  if not errors then
    redis.call('HSET', k.errors, id, '[' .. err .. ']')
  else
    redis.call('HSET', k.errors, id, string.sub(errors, 1, -2) .. ',' .. err .. ']')
  end
end
-- Drop everything the group holds on an entry (acknowledged, or gone from the log).
local function forget(k, id)
  redis.call('ZREM', k.running, id)
  redis.call('ZREM', k.retrying, id)
  redis.call('ZREM', k.dead, id)
  redis.call('HDEL', k.attempt, id)
  redis.call('HDEL', k.recoveries, id)
  redis.call('HDEL', k.errors, id)
  redis.call('HDEL', k.base, id)
end
-- Stream ids in log order ("ms-seq": compared as numbers, not as text).
local function id_parts(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function id_before(a, b)
  local am, as = id_parts(a)
  local bm, bs = id_parts(b)
  return am < bm or (am == bm and as < bs)
end
-- An entry's fields as a table (field -> value).
local function fields(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end
-- The entry's topic and payload, or nil when the log no longer has it (trimmed).
local function entry(id)
  local found = redis.call('XRANGE', LOG, id, id)
  if #found == 0 then return nil end
  return fields(found[1][2])
end
local function split(text)
  local words = {}
  for word in string.gmatch(text .. '.', '([^.]*)%.') do words[#words + 1] = word end
  return words
end
-- Does the pattern name the topic, word by word? '*' is exactly one word, '#' zero or more
-- (dromos.events.topics.matches). Dynamic programming over (pattern words, topic words).
local function matches(pattern, topic)
  local p, w = split(pattern), split(topic)
  -- ok[j]: the pattern words so far match the first j - 1 topic words.
  local ok = {true}
  for j = 2, #w + 1 do ok[j] = false end
  for i = 1, #p do
    local nxt = {}
    if p[i] == '#' then
      local any = false
      for j = 1, #w + 1 do
        any = any or ok[j]
        nxt[j] = any
      end
    else
      nxt[1] = false
      for j = 2, #w + 1 do nxt[j] = ok[j - 1] and (p[i] == '*' or p[i] == w[j - 1]) end
    end
    ok = nxt
  end
  return ok[#w + 1]
end
local function matches_any(patterns, topic)
  for _, pattern in ipairs(patterns) do
    if matches(pattern, topic) then return true end
  end
  return false
end
-- The stream's consumer groups: name -> last-delivered-id.
local function stream_groups()
  local out = {}
  if redis.call('EXISTS', LOG) == 0 then return out end
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', LOG)) do
    local f = fields(info)
    out[f['name']] = f['last-delivered-id']
  end
  return out
end
-- The log's counters: entries ever added to it (nil before Redis 7), entries it holds now.
local function counters()
  if redis.call('EXISTS', LOG) == 0 then return 0, 0 end
  local f = fields(redis.call('XINFO', 'STREAM', LOG))
  return f['entries-added'] and tonumber(f['entries-added']), tonumber(f['length'])
end
-- Entries on the log after an id, counted one page at a time (O(n): only when needed).
local function count_after(id)
  local n, from = 0, '(' .. id
  while true do
    local page = redis.call('XRANGE', LOG, from, '+', 'COUNT', 1000)
    n = n + #page
    if #page < 1000 then return n end
    from = '(' .. page[#page][1]
  end
end
-- Entries on the log after a group's position (some may not match its patterns). Redis's own
-- count (XINFO GROUPS lag) goes wrong for good once trimming passes a group's position (it
-- counts the trimmed entries as read one by one), so the bus keeps its own: E:read, entries
-- ever added up to the position. The log is only trimmed from its head, hence the min().
local function lag(group, last, added, length)
  if not last then return length end  -- its next claim starts it over from the beginning
  local read = redis.call('HGET', READ, group)
  if added and read then return math.max(0, math.min(added - tonumber(read), length)) end
  return count_after(last)
end
-- events_claim, as a function of its arguments (A: as ARGV), for events_settle_claim too.
-- ARGV: E, group, limit, lease (ms), max recoveries, the poison error (JSON, with 1234567891
--   for the recoveries and 1987654321 for the attempt), most entries to scan, retention (ms).
-- Returns 5 values per delivery: id topic payload attempt tries. Redeliveries first (lease ran out,
-- or retry due; in log order), then new entries that match the group's patterns.
local function claim(A)
  local group, limit = A[2], tonumber(A[3])
  local listed = redis.call('HGET', GROUPS, group)
  if not listed or limit <= 0 then return {} end
  local k = gkeys(group)
  local now, scan = clock(), tonumber(A[7])
  local lease_end = now + tonumber(A[4])
  -- Dead letters that failed longer ago than the retention: their events are past it too (the
  -- log keeps nothing to replay), so the group lets go of them, a few per claim.
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', k.dead, '-inf', '(' .. (now - tonumber(A[8])),
      'LIMIT', 0, 100)) do
    forget(k, id)
  end
  local out, delivered = {}, 0
  local function deliver(id, f, attempt, base)
    redis.call('ZADD', k.running, lease_end, id)
    redis.call('HSET', k.attempt, id, attempt)
    out[#out + 1] = id
    out[#out + 1] = f['t'] or ''
    out[#out + 1] = f['p'] or ''
    out[#out + 1] = attempt
    out[#out + 1] = attempt - base
    delivered = delivered + 1
  end
  -- 1. Expired leases and due retries, in log order.
  local expired = redis.call('ZRANGEBYSCORE', k.running, '-inf', '(' .. now, 'LIMIT', 0, scan)
  local due = redis.call('ZRANGEBYSCORE', k.retrying, '-inf', now, 'LIMIT', 0, scan)
  local lost = {}
  for _, id in ipairs(expired) do lost[id] = true end
  local again = {}
  for _, id in ipairs(expired) do again[#again + 1] = id end
  for _, id in ipairs(due) do again[#again + 1] = id end
  table.sort(again, id_before)
  for _, id in ipairs(again) do
    if delivered >= limit then break end
    local attempt = tonumber(redis.call('HGET', k.attempt, id) or '0')
    local poisoned = false
    if lost[id] then
      local recoveries = redis.call('HINCRBY', k.recoveries, id, 1)
      if recoveries > tonumber(A[5]) then
        local err = string.gsub(A[6], '1234567891', tostring(recoveries))
        err = string.gsub(err, '1987654321', tostring(attempt))
        append_error(k, id, err)
        redis.call('ZREM', k.running, id)
        redis.call('ZADD', k.dead, now, id)
        redis.call('XACK', LOG, group, id)
        poisoned = true
      end
    end
    if not poisoned then
      local f = entry(id)
      if f == nil then  -- past the bus's retention: nothing left to deliver
        redis.call('XACK', LOG, group, id)
        forget(k, id)
      else
        redis.call('ZREM', k.retrying, id)
        deliver(id, f, attempt + 1, tonumber(redis.call('HGET', k.base, id) or '0'))
      end
    end
  end
  -- 2. New entries: read after the group's position no more than can still be delivered, so
  -- that the position stops right after the last one taken (as the reference does).
  local patterns = cjson.decode(listed)
  local scanned = 0
  while delivered < limit and scanned < scan do
    local want = math.min(limit - delivered, scan - scanned)
    local read = redis.pcall('XREADGROUP', 'GROUP', group, 'dromos', 'COUNT', want,
      'STREAMS', LOG, '>')
    if type(read) == 'table' and read.err then
      if not string.find(read.err, 'NOGROUP', 1, true) then return redis.error_reply(read.err) end
      -- The log was deleted under the group: start it again on what is there now.
      redis.call('XGROUP', 'CREATE', LOG, group, '0', 'MKSTREAM')
      redis.call('HSET', READ, group, 0)
      read = redis.call('XREADGROUP', 'GROUP', group, 'dromos', 'COUNT', want,
        'STREAMS', LOG, '>')
    end
    if not read then break end
    local entries = read[1][2]
    local passed = {}
    for _, e in ipairs(entries) do
      local f = fields(e[2])
      -- An entry without a topic cannot be routed: every group gets it, and dead-letters it.
      if f['t'] == nil or matches_any(patterns, f['t']) then
        deliver(e[1], f, 1, 0)
      else
        passed[#passed + 1] = e[1]
      end
    end
    if #passed > 0 then
      for s = 1, #passed, 1000 do
        redis.call('XACK', LOG, group, unpack(passed, s, math.min(s + 999, #passed)))
      end
    end
    scanned = scanned + #entries
    if #entries < want then break end
  end
  if scanned > 0 then
    -- The position moved past `scanned` entries, after the trimmed ones it may have skipped.
    local added, length = counters()
    if added then
      local read = tonumber(redis.call('HGET', READ, group) or '0')
      redis.call('HSET', READ, group, math.max(read, added - length) + scanned)
    end
  end
  return out
end
-- events_settle, as a function of its arguments (A: as ARGV).
-- ARGV: E, group, channel, then one MessagePack array of outcomes, each an array: id
--   attempt error(JSON; '' when handled) retry_at(ms, or '+<ms>' after now; '' to
--   dead-letter). Applies only to
--   deliveries still held (running, same attempt). Returns how many applied. The handled
--   ones (the common case) are acknowledged and forgotten with one variadic command each.
local function settle(A)
  local group = A[2]
  local k = gkeys(group)
  local now, applied, retried = clock(), 0, false
  local handled = {}
  for _, o in ipairs(cmsgpack.unpack(A[4])) do
    local id, err, retry = o[1], o[3], o[4]
    if redis.call('ZSCORE', k.running, id) and redis.call('HGET', k.attempt, id) == tostring(o[2]) then
      applied = applied + 1
      if err == '' then
        handled[#handled + 1] = id
      else
        append_error(k, id, err)
        redis.call('ZREM', k.running, id)
        if retry ~= '' then
          if string.sub(retry, 1, 1) == '+' then  -- a wait: on this server's clock
            retry = now + tonumber(string.sub(retry, 2))
          end
          redis.call('ZADD', k.retrying, retry, id)
          retried = true
        else
          redis.call('ZADD', k.dead, now, id)
          redis.call('XACK', LOG, group, id)  -- it stays on the log, for a replay
        end
      end
    end
  end
  for s = 1, #handled, 1000 do  -- unpack() is bounded: chunks
    local ids = {unpack(handled, s, math.min(s + 999, #handled))}
    redis.call('XACK', LOG, group, unpack(ids))
    redis.call('ZREM', k.running, unpack(ids))
    redis.call('HDEL', k.attempt, unpack(ids))
    redis.call('HDEL', k.recoveries, unpack(ids))
    redis.call('HDEL', k.errors, unpack(ids))
    redis.call('HDEL', k.base, unpack(ids))
  end
  if retried then redis.call('PUBLISH', A[3], '1') end
  return applied
end

--- events_publish
-- ARGV: E, retention (ms), channel, then 2 values per event: topic payload. Appends them in
-- order, trims what is older than the retention (exactly: MINID ~ only drops whole nodes
-- of the stream, which would keep old events indefinitely on a quiet bus) and wakes waiters.
local now = clock()
for i = 4, #ARGV, 2 do
  redis.call('XADD', LOG, '*', 't', ARGV[i], 'p', ARGV[i + 1])
end
local horizon = now - tonumber(ARGV[2])
if horizon > 0 then redis.call('XTRIM', LOG, 'MINID', horizon) end
redis.call('PUBLISH', ARGV[3], '1')
return 0

--- events_join
-- ARGV: E, group, patterns (JSON array), start ('$', '0' or the id to start after). An
-- existing group keeps its position and takes the patterns. A group whose stream consumer
-- group is gone (the log was deleted) gets one again, from the start of what is left.
local group = ARGV[2]
local existed = redis.call('HEXISTS', GROUPS, group) == 1
redis.call('HSET', GROUPS, group, ARGV[3])
if stream_groups()[group] then return existed and 0 or 1 end
local start = ARGV[4]
if existed then start = '0' end
redis.call('XGROUP', 'CREATE', LOG, group, start, 'MKSTREAM')
local added = counters()
local read = 0
if start == '$' then
  read = added or 0
elseif start ~= '0' then
  read = (added or 0) - count_after(start)
end
redis.call('HSET', READ, group, read)
return existed and 0 or 1

--- events_leave
-- ARGV: E, group. Deletes the group: its position, its events in flight, its dead letters.
local group = ARGV[2]
local k = gkeys(group)
if stream_groups()[group] then redis.call('XGROUP', 'DESTROY', LOG, group) end
redis.call('HDEL', GROUPS, group)
redis.call('HDEL', READ, group)
redis.call('DEL', k.running, k.retrying, k.dead, k.attempt, k.recoveries, k.errors, k.base)
return 0

--- events_claim
-- (the arguments: see claim above)
return claim(ARGV)

--- events_settle
-- (the arguments: see settle above)
return settle(ARGV)

--- events_settle_claim
-- A consumer that finished a batch and takes the next: events_settle, then events_claim,
-- in one round trip. ARGV: those of events_claim, then the channel and the outcomes of
-- events_settle. Returns what events_claim returns.
settle({ARGV[1], ARGV[2], ARGV[9], ARGV[10]})
return claim(ARGV)

--- events_due
-- ARGV: E, then the groups to look at (none: every group). Returns 0 when a claim of one of
-- them may find something now (entries after its position), else the earliest lease end or
-- retry among them (ms), or -1 when there is none.
local names = {}
if #ARGV == 1 then
  names = redis.call('HKEYS', GROUPS)
else
  for i = 2, #ARGV do names[#names + 1] = ARGV[i] end
end
local positions = stream_groups()
local last = redis.call('XREVRANGE', LOG, '+', '-', 'COUNT', 1)
local due = -1
for _, group in ipairs(names) do
  local position = positions[group]
  if #last > 0 then
    if position and id_before(position, last[1][1]) then return 0 end
    -- A group whose log was deleted under it: its next claim starts it over.
    if not position and redis.call('HEXISTS', GROUPS, group) == 1 then return 0 end
  end
  local k = gkeys(group)
  for _, set in ipairs({k.running, k.retrying}) do
    local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
    if first[2] then
      local score = tonumber(first[2])
      if due < 0 or score < due then due = score end
    end
  end
end
return due

--- events_groups
-- ARGV: E. Returns 6 values per group, by name: group patterns(JSON) lag running retrying dead
local names = redis.call('HKEYS', GROUPS)
table.sort(names)
local positions = stream_groups()
local added, length = counters()
local out = {}
for _, group in ipairs(names) do
  local k = gkeys(group)
  out[#out + 1] = group
  out[#out + 1] = redis.call('HGET', GROUPS, group)
  out[#out + 1] = lag(group, positions[group], added, length)
  out[#out + 1] = redis.call('ZCARD', k.running)
  out[#out + 1] = redis.call('ZCARD', k.retrying)
  out[#out + 1] = redis.call('ZCARD', k.dead)
end
return out

--- events_dead
-- ARGV: E, group, limit. Returns 6 values per dead letter, oldest event first: id topic
-- payload attempt errors(JSON) failed_at(ms). One gone from the log is not listed (it still
-- counts, and is dropped by the claim after its replay).
local group, limit = ARGV[2], tonumber(ARGV[3])
local k = gkeys(group)
local ids = redis.call('ZRANGE', k.dead, 0, -1)
table.sort(ids, id_before)
local out, n = {}, 0
for _, id in ipairs(ids) do
  if n >= limit then break end
  local f = entry(id)
  if f ~= nil then
    out[#out + 1] = id
    out[#out + 1] = f['t'] or ''
    out[#out + 1] = f['p'] or ''
    out[#out + 1] = redis.call('HGET', k.attempt, id) or '0'
    out[#out + 1] = redis.call('HGET', k.errors, id) or '[]'
    out[#out + 1] = redis.call('ZSCORE', k.dead, id)
    n = n + 1
  end
end
return out

--- events_replay
-- ARGV: E, group, channel, then entry ids (none: every dead letter of the group). They are
-- due again now, with a fresh retry budget: their attempt goes on (the fencing token), their
-- base becomes it, so the next delivery's tries is 1; recoveries start over; their errors
-- are kept. Returns how many.
local group = ARGV[2]
local k = gkeys(group)
local ids = {}
if #ARGV == 3 then
  ids = redis.call('ZRANGE', k.dead, 0, -1)
else
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local now, moved, seen = clock(), 0, {}
for _, id in ipairs(ids) do
  if not seen[id] and redis.call('ZSCORE', k.dead, id) then
    seen[id] = true
    redis.call('ZREM', k.dead, id)
    redis.call('ZADD', k.retrying, now, id)
    redis.call('HSET', k.base, id, redis.call('HGET', k.attempt, id) or '0')
    redis.call('HDEL', k.recoveries, id)
    moved = moved + 1
  end
end
if moved > 0 then redis.call('PUBLISH', ARGV[3], '1') end
return moved
