-- ratekeeper: GCRA token buckets in exact integers, many decisions per atomic call.
--
-- The same arithmetic as ratekeeper/_gcra.py (Gcra), with the time read from the server.
-- A bucket's time unit is 1/scale ns, so that one token costs exactly `cost` units and a
-- full bucket spans `burst = capacity * cost` units. Lua numbers are doubles: every value
-- below stays an integer under 2^53 (the client refuses configurations that could not).
--
-- KEYS    the buckets this call touches; all in one hash slot under Redis Cluster.
--         Each holds the string "e t a g b" (one GET, one SET per call): e = epoch (us, when
--         this incarnation of the key was created), t = time of the last write (us), a =
--         units the bucket is ahead of t (its tat - t), g = tokens granted or charged in
--         this epoch (the refund marks count these), b = units the latest slot booked by a
--         reservation is ahead of t (Gcra's booked; b <= a). A key expires (SET PX) when its
--         bucket is full again; a missing key is a full bucket. (A 4-field value, written
--         before b existed, reads as b = 0.)
--         A key whose limit was changed (op K) holds "e t a g b cost scale capacity": that
--         limit is the key's from then on, whatever the callers send in ARGV[2], and the key
--         no longer expires (it is the configuration: DEL it to return to the callers').
-- ARGV[1] "" to read the time with TIME, or a time in us (tests only: then no TTL is set)
-- ARGV[2] the limits of KEYS[1..n] as the caller knows them, space-separated: cost scale
--         capacity, for each key (a key holding its own limit overrides them); a negative
--         capacity (-capacity) asks for the key's own limit in the reply even if it is this
--         one (the batch's callers disagree about it)
-- ARGV[3] the requests, in order, space-separated; each is op, m, then:
--   R  reserve   max_wait_ns (-1: none), then m x (key index, tokens)
--   C  charge    m x (key index, tokens)
--   F  refund    m x (key index, tokens, mark epoch, mark count)   (epoch -1: no mark)
--   S  state     m x (key index)
--   P  pad       m x (key index, units): the bucket is at least `units` ahead of now
--                (ahead = max(ahead, units)): what a process granted alone while the
--                server was down, settled on its return (a max, so that several processes
--                returning do not add up; a no-op for a bucket further behind already)
--   K  set limit m x (key index, cost, scale, capacity): the balance carries over, as
--                Gcra.reconfigure (tokens available stay so, capped at the new capacity;
--                debt stays debt; a capacity raise adds to g, so old marks give back no more)
-- ARGV[4] (optional) floors, space-separated: m x (key index, us, ns, epoch): the latest
--         slot (server time us * 1000 + ns) that the caller's process knows to be booked on
--         that key (by itself or, as a reply told it, by anyone), and the key's epoch then.
--         While the key keeps that epoch the floor is a no-op (the key knows better: a
--         bucket is always at or past its booked slots). A key that is missing, or that
--         holds another epoch (it was recreated since), lost its state (FLUSHALL, eviction,
--         a restart without persistence, a failover to a replica that lagged) while slots
--         were booked: it is put back empty at the floor (ahead >= floor + burst), as the
--         bucket was when the caller last saw it, so that neither the booked slots nor a
--         fresh burst come on top of what was granted before the loss.
-- (Two strings rather than many arguments, and one string back: clients encode and parse
-- a batch of hundreds of decisions as fast as one.)
--
-- Returns one string of space-separated integers: now_us, then per request: status,
-- wait_ns, then m x (epoch, value, ahead); then, for each key whose own limit differs from
-- the one ARGV[2] gave (none, usually: the caller adopts it), 4 more: key index, cost,
-- scale, capacity. Replies to the requests are in the key's own limit.
--   status 1: done (R: granted, to be used wait_ns from now; all keys committed)
--          0: R refused, nothing changed: the wait (wait_ns) exceeds max_wait_ns
--          2: refused, nothing changed: the bucket would run more than 2^52 units ahead
--             (wait_ns holds the index of that key)
--          3: refused: a key holds something else (another type, or a string not of this
--             form; it is left alone); wait_ns holds its index, the triples are 0
--   value: R/C the grant's mark count (g after it), F the units given back, S/K g
--   ahead: units the bucket is ahead of now after the request (0: full)
-- All of a composite request's keys are decided together: all granted or none changed.

if redis.replicate_commands then
  redis.replicate_commands() -- Redis 5/6: replicate effects, as TIME is not deterministic
end

local MAX_AHEAD = 4503599627370496 -- 2^52

-- floor(x / y) for integers with |x| + y < 2^53 and y > 0: the float quotient, corrected.
local function fdiv(x, y)
  local q = math.floor(x / y)
  local r = x - q * y
  if r < 0 then
    q = q - 1
  elseif r >= y then
    q = q + 1
  end
  return q
end

local function cdiv(x, y)
  return -fdiv(-x, y)
end

-- ceil(r * n / c) for 0 <= r < c < 2^52 and 0 < n < 2^52, without forming r * n when it
-- could pass 2^53: long multiplication, one bit of n at a time, keeping the remainder < c.
local function muldiv_ceil(r, n, c)
  if r <= MAX_AHEAD / n then
    return cdiv(r * n, c)
  end
  local bits = {}
  while n > 0 do
    local half = math.floor(n / 2)
    bits[#bits + 1] = n - 2 * half
    n = half
  end
  local q, rem = 0, 0
  for j = #bits, 1, -1 do
    q, rem = 2 * q, 2 * rem
    if rem >= c then
      q, rem = q + 1, rem - c
    end
    if bits[j] == 1 then
      rem = rem + r
      if rem >= c then
        q, rem = q + 1, rem - c
      end
    end
  end
  if rem > 0 then
    q = q + 1
  end
  return q
end

local function fmt(x)
  return string.format("%.0f", x)
end

local test_now = ARGV[1] ~= ""
local now_us
if test_now then
  now_us = tonumber(ARGV[1])
else
  local time = redis.call("TIME")
  now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
end

local function words(text)
  local list = {}
  for word in string.gmatch(text, "%S+") do
    list[#list + 1] = word
  end
  return list
end

local conf = words(ARGV[2])
local cost, scale, capacity, burst = {}, {}, {}, {}
for i = 1, #KEYS do
  local base = 3 * i - 2
  cost[i] = tonumber(conf[base])
  scale[i] = tonumber(conf[base + 1])
  local k = tonumber(conf[base + 2])
  if k < 0 then
    k = -k
  end
  capacity[i] = k
  burst[i] = capacity[i] * cost[i]
end

-- Make (c, sc, k) key i's limit; `own`: the key holds it (reported if ARGV[2] differs).
local own = {} -- key index -> true: the key holds its limit
local differs = {} -- key index -> true: its limit goes in the reply's trailer
local function set_limit(i, c, sc, k)
  cost[i], scale[i], capacity[i], burst[i] = c, sc, k, k * c
  own[i] = true
  local base = 3 * i - 2
  differs[i] = fmt(c) ~= conf[base] or fmt(sc) ~= conf[base + 1] or fmt(k) ~= conf[base + 2]
end
local arg = words(ARGV[3])
local floor_us, floor_ns, floor_e = {}, {}, {}
if ARGV[4] then
  local f = words(ARGV[4])
  for k = 1, #f, 4 do
    local i = tonumber(f[k])
    floor_us[i], floor_ns[i] = tonumber(f[k + 1]), tonumber(f[k + 2])
    floor_e[i] = tonumber(f[k + 3])
  end
end

-- Bucket states, loaded on first use: ahead is relative to now_us (the tat - now, >= 0).
local state = {}

local function load(i)
  local s = state[i]
  if s then
    return s
  end
  local raw = redis.pcall("GET", KEYS[i])
  local e, t, a, g, b, rest, c, sc, k
  if type(raw) == "string" then
    e, t, a, g, b, rest = string.match(raw, "^(%d+) (%d+) (%d+) (%d+) ?(%d*)(.*)$")
    if rest and rest ~= "" then
      c, sc, k = string.match(rest, "^ (%d+) (%d+) (%d+)$")
      if not c then
        e = nil
      end
    end
  end
  if type(raw) == "table" or (raw and not e) then
    s = { bad = true } -- another type (an error reply), or a string of another form
  elseif e then
    if c then
      set_limit(i, tonumber(c), tonumber(sc), tonumber(k))
    end
    local step = 1000 * scale[i]
    local elapsed = now_us - tonumber(t)
    -- x - elapsed * step, floored at 0, without forming a product that could pass 2^53.
    -- A server clock that steps back stands still rather than taking tokens away.
    local function since(x)
      if elapsed <= 0 then
        return x
      end
      if elapsed > x / step + 1 then
        return 0
      end
      x = x - elapsed * step
      if x < 0 then
        return 0
      end
      return x
    end
    local booked = 0
    if b ~= "" then
      booked = since(tonumber(b))
    end
    s = { e = tonumber(e), g = tonumber(g), ahead = since(tonumber(a)), booked = booked }
  else
    s = { e = now_us, g = 0, ahead = 0, booked = 0, new = true }
  end
  local fu = floor_us[i]
  if fu and not s.bad and fu >= now_us and (s.new or s.e ~= floor_e[i]) then
    -- State lost since the caller saw the slot: the bucket again empty at that slot.
    local ns = (fu - now_us) * 1000 + floor_ns[i]
    local at = MAX_AHEAD
    if ns <= (MAX_AHEAD - burst[i]) / scale[i] then
      at = ns * scale[i]
    end
    local ahead = at + burst[i]
    if ahead > MAX_AHEAD then
      ahead = MAX_AHEAD
    end
    if ahead > s.ahead then
      s.ahead = ahead
      s.dirty = true
    end
    if at > s.booked then
      s.booked = at
    end
  end
  state[i] = s
  return s
end

local out = { now_us }
local pos = 1
local nargs = #arg

-- Append the per-key triples of the request whose key indices are idx[1..m].
local function report(idx, value)
  for j = 1, #idx do
    local s = state[idx[j]]
    out[#out + 1] = s.e
    out[#out + 1] = value and value[j] or s.g
    out[#out + 1] = s.ahead
  end
end

-- Append a refusal: nothing changed, so the keys' states are reported as they are.
local function refuse(status, code, idx)
  out[#out + 1] = status
  out[#out + 1] = code
  if status == 3 then
    for _ = 1, #idx do
      out[#out + 1] = 0
      out[#out + 1] = 0
      out[#out + 1] = 0
    end
  else
    report(idx)
  end
end

while pos <= nargs do
  local op = arg[pos]
  local m = tonumber(arg[pos + 1])
  pos = pos + 2
  local max_wait = -1
  if op == "R" then
    max_wait = tonumber(arg[pos])
    pos = pos + 1
  end
  local width = 2
  if op == "F" or op == "K" then
    width = 4
  elseif op == "S" then
    width = 1
  end
  local idx, tokens, mark_e, mark_g = {}, {}, {}, {}
  local bad = 0
  for j = 1, m do
    local i = tonumber(arg[pos])
    idx[j] = i
    if width > 1 then
      tokens[j] = tonumber(arg[pos + 1])
    end
    if width == 4 then
      mark_e[j] = tonumber(arg[pos + 2])
      mark_g[j] = tonumber(arg[pos + 3])
    end
    pos = pos + width
    if load(i).bad and bad == 0 then
      bad = i
    end
  end

  if bad > 0 then
    refuse(3, bad, idx)
  elseif op == "R" then
    -- The grant time is the latest of the keys' own earliest times (wait, in ns).
    local waits, wait = {}, 0
    for j = 1, m do
      local i = idx[j]
      local due = state[i].ahead + tokens[j] * cost[i] - burst[i]
      local w = 0
      if due > 0 then
        w = cdiv(due, scale[i])
      end
      waits[j] = w
      if w > wait then
        wait = w
      end
    end
    if max_wait >= 0 and wait > max_wait then
      refuse(0, wait, idx)
    else
      -- Each key is committed at the grant time: at once for the key(s) that set it (as in
      -- Gcra.reserve_at), `wait` from now for a key that could have served earlier.
      local new, over = {}, 0
      for j = 1, m do
        local i = idx[j]
        local at = 0
        if waits[j] < wait then
          if wait > MAX_AHEAD / scale[i] then
            over = i
            break
          end
          at = wait * scale[i]
        end
        local ahead = state[i].ahead
        if ahead < at then
          ahead = at
        end
        ahead = ahead + tokens[j] * cost[i]
        if ahead > MAX_AHEAD then
          over = i
          break
        end
        new[j] = ahead
      end
      if over > 0 then
        refuse(2, over, idx)
      else
        out[#out + 1] = 1
        out[#out + 1] = wait
        for j = 1, m do
          local i = idx[j]
          local s = state[i]
          s.ahead = new[j]
          s.g = s.g + tokens[j]
          s.dirty = true
          -- A slot ahead is promised to a sleeper (Gcra._book): remember the latest.
          if wait > 0 and wait * scale[i] > s.booked then
            s.booked = wait * scale[i]
          end
        end
        report(idx)
      end
    end
  elseif op == "C" then
    local over = 0
    for j = 1, m do
      local i = idx[j]
      if state[i].ahead + tokens[j] * cost[i] > MAX_AHEAD then
        over = i
        break
      end
    end
    if over > 0 then
      refuse(2, over, idx)
    else
      out[#out + 1] = 1
      out[#out + 1] = 0
      for j = 1, m do
        local i = idx[j]
        local s = state[i]
        s.ahead = s.ahead + tokens[j] * cost[i]
        s.g = s.g + tokens[j]
        s.dirty = true
      end
      report(idx)
    end
  elseif op == "F" then
    -- As Gcra.refund_at: with a mark, new ahead = max(ahead - tokens*cost, booked +
    -- later*cost), where `later` counts the tokens granted since the marked grant and
    -- booked (>= 0) is how far ahead the latest booked slot lies; without a mark, nothing
    -- goes back while a slot is booked ahead (the tokens may be a sleeper's), else down to
    -- 0 at most. Never raised. A mark of an earlier epoch returns nothing: the bucket was
    -- full since.
    local back = {}
    for j = 1, m do
      local i = idx[j]
      local s = state[i]
      local c = cost[i]
      local ahead = s.ahead
      local returned = 0
      local floor = -1
      if ahead > 0 then
        if mark_e[j] < 0 then
          if s.booked <= 0 then
            floor = 0
          end
        elseif mark_e[j] == s.e then
          local later = s.g - mark_g[j]
          if later < 0 then
            later = 0
          end
          if later <= ahead / c + 1 then -- past this, the floor is above ahead anyway
            floor = s.booked + later * c
          end
        end
      end
      if floor >= 0 and floor < ahead then
        local new = floor
        if tokens[j] <= ahead / c + 1 and ahead - tokens[j] * c > new then
          new = ahead - tokens[j] * c
        end
        returned = ahead - new
        s.ahead = new
        s.dirty = true
      end
      back[j] = returned
    end
    out[#out + 1] = 1
    out[#out + 1] = 0
    report(idx, back)
  elseif op == "P" then
    for j = 1, m do
      local s = state[idx[j]]
      local units = tokens[j]
      if units > MAX_AHEAD then
        units = MAX_AHEAD
      end
      if units > s.ahead then
        s.ahead = units
        s.dirty = true
      end
    end
    out[#out + 1] = 1
    out[#out + 1] = 0
    report(idx)
  elseif op == "S" then
    out[#out + 1] = 1
    out[#out + 1] = 0
    report(idx)
  elseif op == "K" then
    -- As Gcra.reconfigure. With ahead = q * cost + r (0 <= r < cost) the balance is
    -- capacity - q - r/cost tokens; under the new limit the deficit is d + r/cost tokens,
    -- d = capacity' - capacity + q, and 0 if that is <= 0 (the balance is capped).
    local new, over = {}, 0
    for j = 1, m do
      local i = idx[j]
      local s = state[i]
      local c1, s1, k1 = tokens[j], mark_e[j], mark_g[j]
      local q = fdiv(s.ahead, cost[i])
      local r = s.ahead - q * cost[i]
      local d = k1 - capacity[i] + q
      local ahead, booked = 0, 0
      if d > 0 or (d == 0 and r > 0) then
        if d > MAX_AHEAD / c1 then
          over = i
          break
        end
        ahead = d * c1 + muldiv_ceil(r, c1, cost[i])
      end
      if s.booked > 0 then
        booked = cdiv(s.booked, scale[i]) -- ns, rounded up as Gcra does
        if booked > MAX_AHEAD / s1 then
          over = i
          break
        end
        booked = booked * s1
      end
      if ahead > MAX_AHEAD then
        over = i
        break
      end
      new[j] = { ahead, booked }
    end
    if over > 0 then
      refuse(2, over, idx)
    else
      for j = 1, m do
        local i = idx[j]
        local s = state[i]
        local k1 = mark_g[j]
        if k1 > capacity[i] then
          s.g = s.g + k1 - capacity[i]
        end
        s.ahead, s.booked = new[j][1], new[j][2]
        s.dirty = true
        set_limit(i, tokens[j], mark_e[j], k1)
      end
      out[#out + 1] = 1
      out[#out + 1] = 0
      report(idx)
    end
  else
    return redis.error_reply("ERR ratekeeper: unknown op " .. tostring(op))
  end
end

for i, s in pairs(state) do
  if s.dirty then
    local value = fmt(s.e) .. " " .. fmt(now_us) .. " " .. fmt(s.ahead) .. " " .. fmt(s.g)
      .. " " .. fmt(s.booked)
    if own[i] then
      -- The key holds its limit: it must outlive a full bucket.
      value = value .. " " .. fmt(cost[i]) .. " " .. fmt(scale[i]) .. " " .. fmt(capacity[i])
      redis.call("SET", KEYS[i], value)
    elseif test_now then
      redis.call("SET", KEYS[i], value)
    else
      -- Expire when the bucket is full again (ms, rounded up, + 1 so it outlives this ms).
      redis.call("SET", KEYS[i], value, "PX", cdiv(s.ahead, 1000000 * scale[i]) + 1)
    end
  end
end

-- The keys' own limits the caller does not know yet.
for i, report_it in pairs(differs) do
  if report_it then
    out[#out + 1] = i
    out[#out + 1] = cost[i]
    out[#out + 1] = scale[i]
    out[#out + 1] = capacity[i]
  end
end

for k = 1, #out do
  out[k] = fmt(out[k])
end
return table.concat(out, " ")
