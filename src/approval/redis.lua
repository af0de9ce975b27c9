-- Approvals shared by replicas (see redis.rs). ARGV[1] is the operation, ARGV[2]
-- the key prefix. Keys, under the prefix:
--   approval:waiting           ZSET  id -> when it expires (ms, the server's clock)
--   approval:owner:<owner>     ZSET  the same, for one caller
--   approval:req:<id>          the request (JSON), kept a minute past its expiry so
--                              that its expiry can be reported
--   approval:call:<key>        the id of the request waiting for that call
--   approval:verdict:<key>     {"approved":..,"id":..,"by":..} until the retry
--   approval:nonce:<nonce>     a spent approval state
-- Every operation first sweeps the requests that expired, and returns them (JSON).
local op, p = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local waiting = p .. 'approval:waiting'

local function take(id)
  local stored = redis.call('GET', p .. 'approval:req:' .. id)
  redis.call('ZREM', waiting, id)
  redis.call('DEL', p .. 'approval:req:' .. id)
  if not stored then return nil end
  local request = cjson.decode(stored)
  redis.call('ZREM', p .. 'approval:owner:' .. request.owner, id)
  local call = p .. 'approval:call:' .. request.key
  if redis.call('GET', call) == id then redis.call('DEL', call) end
  return stored, request
end

local expired = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', waiting, '-inf', now)) do
  local stored = take(id)
  if stored then table.insert(expired, stored) end
end

if op == 'spend' then
  local set = redis.call('SET', p .. 'approval:nonce:' .. ARGV[3], '1', 'NX', 'PX', ARGV[4])
  return { expired, set and 1 or 0 }
end

if op == 'take' then
  -- ARGV: the call's key. An approval waiting for it, used up.
  local key = p .. 'approval:verdict:' .. ARGV[3]
  local raw = redis.call('GET', key)
  if raw and cjson.decode(raw).approved then
    redis.call('DEL', key)
    return { expired, raw }
  end
  return { expired, false }
end

if op == 'keep' then
  -- ARGV: the call's key, the verdict (JSON), how long it lasts (ms).
  redis.call('SET', p .. 'approval:verdict:' .. ARGV[3], ARGV[4], 'PX', ARGV[5])
  return { expired, 1 }
end

if op == 'pending' then
  local list = {}
  local ids = redis.call('ZRANGEBYSCORE', waiting, '(' .. now, '+inf', 'WITHSCORES')
  for i = 1, #ids, 2 do
    local stored = redis.call('GET', p .. 'approval:req:' .. ids[i])
    if stored then table.insert(list, { stored, tonumber(ids[i + 1]) - now }) end
  end
  return { expired, list }
end

if op == 'decide' then
  -- ARGV: id, by, approved (1/0)
  local id, by, approved = ARGV[3], ARGV[4], ARGV[5] == '1'
  local until_ms = redis.call('ZSCORE', waiting, id)
  if not until_ms then return { expired, false } end
  local stored, request = take(id)
  if not stored then return { expired, false } end
  local verdict = cjson.encode({ approved = approved, id = id, by = by })
  redis.call('SET', p .. 'approval:verdict:' .. request.key, verdict, 'PX', request.timeout_ms)
  return { expired, { stored, tonumber(until_ms) - now } }
end

if op == 'ask' then
  -- ARGV: per caller, in all, then per call: key, owner, id, timeout (ms), request (JSON)
  local per_caller, in_all = tonumber(ARGV[3]), tonumber(ARGV[4])
  local calls = {}
  for i = 5, #ARGV, 5 do
    table.insert(calls, { key = ARGV[i], owner = ARGV[i + 1], id = ARGV[i + 2],
      timeout = tonumber(ARGV[i + 3]), stored = ARGV[i + 4] })
  end
  local function verdict(call)
    local v = redis.call('GET', p .. 'approval:verdict:' .. call.key)
    if v then return v, cjson.decode(v) end
    return nil, nil
  end
  local every = true
  for _, call in ipairs(calls) do
    local _, v = verdict(call)
    if not (v and v.approved) then every = false end
  end
  local results = {}
  for _, call in ipairs(calls) do
    local raw, v = verdict(call)
    if every then
      redis.call('DEL', p .. 'approval:verdict:' .. call.key)
      table.insert(results, { 'used', raw })
    elseif v and v.approved then
      table.insert(results, { 'approved', raw })
    elseif v then
      redis.call('DEL', p .. 'approval:verdict:' .. call.key)
      table.insert(results, { 'declined', raw })
    else
      local callkey = p .. 'approval:call:' .. call.key
      local id = redis.call('GET', callkey)
      if id then
        table.insert(results, { 'pending', id, tostring(redis.call('PTTL', callkey)) })
      else
        local owner = p .. 'approval:owner:' .. call.owner
        local mine, all = redis.call('ZCARD', owner), redis.call('ZCARD', waiting)
        if mine >= per_caller or all >= in_all then
          table.insert(results, { 'full', tostring(math.max(mine, math.min(all, in_all))) })
        else
          local expires = now + call.timeout
          redis.call('SET', p .. 'approval:req:' .. call.id, call.stored, 'PX', call.timeout + 60000)
          redis.call('SET', callkey, call.id, 'PX', call.timeout)
          redis.call('ZADD', waiting, expires, call.id)
          redis.call('ZADD', owner, expires, call.id)
          if redis.call('PTTL', owner) < call.timeout + 60000 then
            redis.call('PEXPIRE', owner, call.timeout + 60000)
          end
          table.insert(results, { 'new', call.id, tostring(call.timeout) })
        end
      end
    end
  end
  return { expired, results }
end

return redis.error_reply('unknown approvals operation ' .. tostring(op))
