-- tower-mcp-policy: the GCRA step of governor over every bucket of one request, applied
-- all or nothing. One value per key (its theoretical arrival time, in microseconds);
-- each key expires once its bucket has refilled.
--
-- KEYS: the buckets.
-- ARGV[1]: now in microseconds, or "" for the server's clock (replicas then agree).
-- ARGV[2]: "c" to charge, "r" to refund.
-- Then, per key: the period (microseconds per unit, may be fractional), max, cost.
-- Returns {0, "0"} when charged, {i, wait} when key i does not fit (wait in
-- microseconds, "-1" when it never can).
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local tats = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local a = 3 + (i - 1) * 3
  local t = tonumber(ARGV[a])
  local tau = t * (tonumber(ARGV[a + 1]) - 1)
  local n = tonumber(ARGV[a + 2])
  local tat = tats[key]
  if tat == nil then
    tat = tonumber(redis.call('GET', key))
  end
  if ARGV[2] == 'r' then
    if tat ~= nil then
      tats[key] = tat - t * n
    end
  else
    if tat == nil then
      tat = now
    end
    local extra = t * (n - 1)
    if extra > tau then
      return {i, '-1'}
    end
    local earliest = tat + extra - tau
    if now < earliest then
      return {i, string.format('%.17g', earliest - now)}
    end
    tats[key] = math.max(tat, now) + t * n
  end
end
for key, tat in pairs(tats) do
  if tat <= now then
    redis.call('DEL', key)
  else
    local ttl = math.ceil((tat - now) / 1000) + 1000
    redis.call('SET', key, string.format('%.17g', tat), 'PX', ttl)
  end
end
return {0, '0'}
