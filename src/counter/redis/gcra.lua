-- tower-mcp-policy: the GCRA step of governor over the buckets of one or more requests.
-- Each request (a group) is applied all or nothing, in order; a group that does not fit
-- changes nothing.
--
-- KEYS: every bucket the groups name, each once.
-- ARGV[1]: now in microseconds, or "" for the server's clock (replicas then agree).
-- ARGV[2]: the number of kinds of charge; then per kind: the period (nanoseconds per
-- unit), max, cost.
-- The last ARGV: the groups, as one string of numbers, each in 7-bit digits, least
-- significant first, the high bit set on every byte but a number's last. Per group:
-- the number of its charges times two, plus one to refund them; then per charge one
-- number, (kind - 1) * #KEYS + the index of its key in KEYS.
-- Returns, in one string (the cheapest reply to read), the number of groups, then one
-- "group:index:wait" per group that did not fit, all separated by spaces: its charge
-- `index` did not fit, and would after `wait` microseconds ("-1": never). A group not
-- named was applied.
--
-- A key holds its bucket's theoretical arrival time in quarters of a microsecond: a
-- whole number for any time after 2005, so exact with '%d'. A bucket that has refilled
-- is deleted. Expiries follow a grid of eighths of the counter's window: a key's expiry
-- is the end of the cell after the one its arrival time is in, plus a second. It is
-- written only when the arrival time enters another cell, so a busy key is written with
-- `KEEPTTL` most of the time; a key outlives its bucket by at least a second and expires
-- at most 1.25 windows + 1 s after its last use.
--
-- Redis runs this for every request, so it is written for cost (measured with callgrind
-- on redis-server): keys are read with one MGET and addressed by index, what a kind
-- implies is worked out once per call, numbers are read with `+ 0` (one conversion,
-- where tonumber makes two), the groups come in one argument (Redis turns each argument
-- into a string, and Lua each string back into a number), a request of one charge
-- skips the staging a request of several needs, only the groups that did not fit are
-- answered, and an unmoved expiry is kept instead of written again.
local call, format = redis.call, string.format
local now = ARGV[1]
if now == '' then
  local t = call('TIME')
  now = t[1] * 1000000 + t[2]
else
  now = now + 0
end

-- Per kind, in microseconds: a charge's increment, how far past now a bucket may already
-- be for the charge to fit (negative: it never fits), and the expiry grid's step.
local inc, reach, step = {}, {}, {}
local a = 3
for i = 1, ARGV[2] + 0 do
  local t = ARGV[a] / 1000
  local max = ARGV[a + 1] + 0
  local cost = ARGV[a + 2] + 0
  inc[i] = t * cost
  reach[i] = t * (max - 1) - t * (cost - 1)
  step[i] = t * max / 8
  a = a + 3
end

-- Per key: its arrival time (false when absent), the time it was read with, and the
-- kind that last changed it (nil: unchanged).
local nkeys = #KEYS
local tat = {}
if nkeys > 0 then
  if nkeys <= 1000 then
    tat = call('MGET', unpack(KEYS))
  else
    for first = 1, nkeys, 1000 do
      local values = call('MGET', unpack(KEYS, first, math.min(first + 999, nkeys)))
      for i = 1, #values do
        tat[first + i - 1] = values[i]
      end
    end
  end
end
for i = 1, nkeys do
  local value = tat[i]
  if value then
    tat[i] = value / 4
  end
end
local old
if nkeys <= 1000 then
  old = {unpack(tat)}
else
  old = {}
  for i = 1, nkeys do
    old[i] = tat[i]
  end
end
local dirty = {}

-- The groups' numbers, as bytes.
local numbers = ARGV[a]
local len = #numbers
if len <= 4000 then
  numbers = {string.byte(numbers, 1, len)}
else
  local text = numbers
  numbers = {}
  for first = 1, len, 4000 do
    local chunk = {string.byte(text, first, math.min(first + 3999, len))}
    for i = 1, #chunk do
      numbers[first + i - 1] = chunk[i]
    end
  end
end
-- A number of more than one byte, given its first byte and the position of the next:
-- the number, and the position after it.
local function long(n, at)
  n = n - 128
  local scale = 128
  local b = numbers[at]
  while b >= 128 do
    n = n + (b - 128) * scale
    scale = scale * 128
    at = at + 1
    b = numbers[at]
  end
  return n + b * scale, at + 1
end

-- The key and kind of the charge whose number starts at `at`, and the position after it.
local function charge_at(at)
  local n = numbers[at]
  if n >= 128 then
    n, at = long(n, at + 1)
  else
    at = at + 1
  end
  n = n - 1
  return n % nkeys + 1, (n - n % nkeys) / nkeys + 1, at
end

-- A charge of `kind` on a bucket whose arrival time is `t` (false: empty): the bucket's
-- new arrival time, or nil and the wait in microseconds until it would fit (-1: never).
local function charge(t, kind)
  local r = reach[kind]
  if r < 0 then
    return nil, -1
  end
  t = t or now
  if now < t - r then
    return nil, t - r - now
  end
  if t < now then
    t = now
  end
  return t + inc[kind]
end

-- A group's new values, not yet committed: key staged_key[j] gets staged_tat[j].
local staged_key, staged_tat, staged_kind
local failed = {}
local g = 0
a = 1
while a <= len do
  local n = numbers[a]
  a = a + 1
  if n >= 128 then
    n, a = long(n, a)
  end
  local refund = n % 2 == 1
  n = (n - n % 2) / 2
  g = g + 1
  if n == 1 and not refund then
    -- One charge (the usual request): applied or not, with nothing to stage.
    local key, kind
    key, kind, a = charge_at(a)
    local new, wait = charge(tat[key], kind)
    if new then
      tat[key] = new
      dirty[key] = kind
    else
      failed[#failed + 1] = g .. ':1:' .. format('%.17g', wait)
    end
  else
    if not staged_key then
      staged_key, staged_tat, staged_kind = {}, {}, {}
    end
    local staged = 0
    local result
    for i = 1, n do
      local key, kind
      key, kind, a = charge_at(a)
      -- A key named twice in a group sees the value the group staged for it.
      local s = 0
      for j = 1, staged do
        if staged_key[j] == key then
          s = j
        end
      end
      local t
      if s > 0 then
        t = staged_tat[s]
      else
        t = tat[key]
      end
      local new
      if refund then
        if t then
          new = t - inc[kind]
        end
      elseif not result then
        local wait
        new, wait = charge(t, kind)
        if not new then
          result = g .. ':' .. i .. ':' .. format('%.17g', wait)
        end
      end
      if new then
        if s == 0 then
          staged = staged + 1
          s = staged
          staged_key[s] = key
        end
        staged_tat[s] = new
        staged_kind[s] = kind
      end
    end
    if result then
      failed[#failed + 1] = result
    else
      for j = 1, staged do
        local key = staged_key[j]
        tat[key] = staged_tat[j]
        dirty[key] = staged_kind[j]
      end
    end
  end
end

for i = 1, nkeys do
  local kind = dirty[i]
  if kind then
    local t = tat[i]
    if t <= now then
      call('DEL', KEYS[i])
    else
      local quarters = t * 4
      local value
      if quarters % 1 == 0 then
        value = format('%d', quarters)
      else
        value = format('%.17g', quarters)
      end
      local s = step[kind]
      local cell = t - t % s
      local was = old[i]
      if was and was - was % s == cell then
        call('SET', KEYS[i], value, 'KEEPTTL')
      else
        local ttl = math.ceil((cell + 2 * s - now) / 1000) + 1000
        call('SET', KEYS[i], value, 'PX', format('%d', ttl))
      end
    end
  end
end
if #failed == 0 then
  return g .. ''
end
return g .. ' ' .. table.concat(failed, ' ')
