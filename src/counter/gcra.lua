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
local server_now
local function clock(arg)
  if arg ~= '' then
    return tonumber(arg)
  end
  if server_now == nil then
    local t = redis.call('TIME')
    server_now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return server_now
end

-- Committed state of every key read so far: a number, or false when absent.
local tats = {}
-- The clock of the last group that changed a key, for its expiry.
local touched = {}
local function stored(key)
  local tat = tats[key]
  if tat == nil then
    tat = tonumber(redis.call('GET', key)) or false
    tats[key] = tat
  end
  return tat
end

local results = {}
local k = 0
local a = 2
for g = 1, tonumber(ARGV[1]) do
  local now = clock(ARGV[a])
  local refund = ARGV[a + 1] == 'r'
  local n = tonumber(ARGV[a + 2])
  a = a + 3
  local staged = {}
  local result = '0:0'
  for i = 1, n do
    local key = KEYS[k + i]
    local t = tonumber(ARGV[a]) / 1000
    local tau = t * (tonumber(ARGV[a + 1]) - 1)
    local cost = tonumber(ARGV[a + 2])
    a = a + 3
    local tat = staged[key]
    if tat == nil then
      tat = stored(key)
    end
    if refund then
      if tat then
        staged[key] = tat - t * cost
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
        staged[key] = math.max(tat, now) + t * cost
      end
    end
  end
  k = k + n
  if result == '0:0' then
    for key, tat in pairs(staged) do
      tats[key] = tat
      touched[key] = now
    end
  end
  results[g] = result
end

for key, now in pairs(touched) do
  local tat = tats[key]
  if tat <= now then
    redis.call('DEL', key)
  else
    local ttl = math.ceil((tat - now) / 1000) + 1000
    redis.call('SET', key, string.format('%.17g', tat), 'PX', ttl)
  end
end
return table.concat(results, ' ')
