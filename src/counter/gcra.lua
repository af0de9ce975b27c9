-- tower-mcp-policy: the GCRA step of governor over the buckets of one or more requests.
-- Each request (a group) is applied all or nothing, in order; a group that does not fit
-- changes nothing. One value per key (its theoretical arrival time, in microseconds);
-- each key expires once its bucket has refilled.
--
-- KEYS: the buckets of every group, group after group.
-- ARGV[1]: the number of groups.
-- Then, per group: now in microseconds or "" for the server's clock (replicas then
-- agree), "c" to charge or "r" to refund, the number of its keys; then per key: the
-- period (nanoseconds per unit), max, cost.
-- Returns one "index:wait" per group, separated by spaces (one string is the cheapest
-- reply to read): "0:0" when applied, "i:wait" when the group's key i does not fit
-- (wait in microseconds, "-1" when it never can).
--
-- Redis runs this for every request, so it is written for cost: numbers are read with
-- `+ 0` (one conversion, where tonumber makes two), a group stages its keys in two
-- arrays reused by every group instead of a new table, and integers are written with
-- '%d'. Times need '%.17g', the only format that keeps every bit of a double.
local server_now
local function clock(arg)
  if arg ~= '' then
    return arg + 0
  end
  if server_now == nil then
    local t = redis.call('TIME')
    server_now = t[1] * 1000000 + t[2]
  end
  return server_now
end

-- Committed state of every key read so far: a number, or false when absent.
local tats = {}
-- The keys changed, in order, and the clock of the last group that changed each.
local changed = {}
local touched = {}
local function stored(key)
  local tat = tats[key]
  if tat == nil then
    local value = redis.call('GET', key)
    tat = value and value + 0
    tats[key] = tat
  end
  return tat
end

-- A group's new values, not yet committed: staged_key[j] gets staged_tat[j].
local staged_key = {}
local staged_tat = {}
local results = {}
local k = 0
local a = 2
for g = 1, ARGV[1] + 0 do
  local now = clock(ARGV[a])
  local refund = ARGV[a + 1] == 'r'
  local n = ARGV[a + 2] + 0
  a = a + 3
  local staged = 0
  local result = '0:0'
  for i = 1, n do
    local key = KEYS[k + i]
    local t = ARGV[a] / 1000
    local tau = t * (ARGV[a + 1] - 1)
    local cost = ARGV[a + 2] + 0
    a = a + 3
    -- A key named twice in a group sees the value the group staged for it.
    local s = 0
    for j = 1, staged do
      if staged_key[j] == key then
        s = j
      end
    end
    local tat
    if s > 0 then
      tat = staged_tat[s]
    else
      tat = stored(key)
    end
    local new
    if refund then
      if tat then
        new = tat - t * cost
      end
    elseif result == '0:0' then
      if not tat then
        tat = now
      end
      local extra = t * (cost - 1)
      local earliest = tat + extra - tau
      if extra > tau then
        result = i .. ':-1'
      elseif now < earliest then
        result = i .. ':' .. string.format('%.17g', earliest - now)
      else
        if tat < now then
          tat = now
        end
        new = tat + t * cost
      end
    end
    if new then
      if s == 0 then
        staged = staged + 1
        s = staged
        staged_key[s] = key
      end
      staged_tat[s] = new
    end
  end
  k = k + n
  if result == '0:0' then
    for j = 1, staged do
      local key = staged_key[j]
      if touched[key] == nil then
        changed[#changed + 1] = key
      end
      tats[key] = staged_tat[j]
      touched[key] = now
    end
  end
  results[g] = result
end

for i = 1, #changed do
  local key = changed[i]
  local tat, now = tats[key], touched[key]
  if tat <= now then
    redis.call('DEL', key)
  else
    local ttl = math.ceil((tat - now) / 1000) + 1000
    redis.call('SET', key, string.format('%.17g', tat), 'PX', string.format('%d', ttl))
  end
end
return table.concat(results, ' ')
