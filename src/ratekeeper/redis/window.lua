-- ratekeeper: a sliding window (at most N tokens in any window of T), one decision per call.
--
-- The same arithmetic as ratekeeper/_window.py (SlidingLog), with the time read from the
-- server (TIME, in microseconds). A grant of n tokens at t counts in every window that
-- contains t; tokens granted at t may go again at t + T.
--
-- KEYS[1] the window: a list of the times (us) of its tokens, newest first, one element per
--         token; its last element may instead be "t*c": c tokens counted at t, older than
--         all the others (a debt past N, kept as one count at the newest of its times, which
--         is never earlier than their own). At most N + 1 elements. The key expires when
--         its newest token leaves the window; a missing key is an empty window.
-- ARGV[1] "" to read the time with TIME, or a time in us (tests only)
-- ARGV[2] N, the capacity (tokens)
-- ARGV[3] T, the window (us)
-- ARGV[4] the op, then its numbers:
--   R n max_wait   reserve n tokens for the earliest time they fit, if that is within
--                  max_wait us (-1: any); they are recorded at that time
--   C n            charge: record n tokens now, past N if need be (debt)
--   F n mark       refund n tokens: of the grant recorded at time `mark` (-1: the n oldest
--                  tokens in the window)
--   S              state
-- Returns one string of space-separated integers: now, then
--   R  status (1 granted, 0 refused: nothing changed), wait (us), mark (the grant's time)
--   C  mark
--   F  tokens given back
--   S  tokens in the window now, us until it is empty

if redis.replicate_commands then
  redis.replicate_commands() -- Redis 5/6: replicate effects, as TIME is not deterministic
end

local key = KEYS[1]
local now
if ARGV[1] == "" then
  local time = redis.call("TIME")
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
else
  now = tonumber(ARGV[1])
end
local cap = tonumber(ARGV[2])
local span = tonumber(ARGV[3])
local op = ARGV[4]

local function int(x)
  return string.format("%.0f", x)
end

-- The tail: a run "t*c" of the debt, or a plain token.
local len = redis.call("LLEN", key)
local run_t, run_c = nil, 0
local oldest = nil -- the oldest plain token's time, while it is known
if len > 0 then
  local tail = redis.call("LINDEX", key, -1)
  local star = string.find(tail, "*", 1, true)
  if star then
    run_t = tonumber(string.sub(tail, 1, star - 1))
    run_c = tonumber(string.sub(tail, star + 1))
  else
    oldest = tonumber(tail)
  end
end
local plain = len - (run_t and 1 or 0)
local newest = nil -- the newest token's time, read once (false: none)

-- The time of the token p places from the newest (0: the newest), or nil.
local function at(p)
  if p == 0 and newest ~= nil then
    return newest or nil
  end
  if p < plain then
    return tonumber(redis.call("LINDEX", key, p))
  end
  if p < plain + run_c then
    return run_t
  end
  return nil
end

-- The number of plain tokens newer than `start` (the list is sorted, newest first).
local function newer_than(start)
  local lo, hi = 0, plain
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if tonumber(redis.call("LINDEX", key, mid)) > start then
      lo = mid + 1
    else
      hi = mid
    end
  end
  return lo
end

-- Drop the tokens that have slid out of the window that ends at `t`.
local function prune(t)
  local start = t - span
  if run_t then
    if run_t > start then
      return -- every plain token is newer than the run
    end
    redis.call("RPOP", key)
    run_t, run_c = nil, 0
    len = len - 1
    newest = nil
  end
  if plain == 0 then
    return
  end
  if oldest == nil then
    oldest = tonumber(redis.call("LINDEX", key, plain - 1))
  end
  if oldest > start then
    return
  end
  oldest = nil
  local keep = newer_than(start)
  if keep == 0 then
    redis.call("DEL", key)
  else
    redis.call("LTRIM", key, 0, keep - 1)
  end
  plain = keep
  len = keep
  newest = nil
end

local function expire()
  local last = at(0)
  if last then
    redis.call("PEXPIRE", key, math.floor((last + span - now) / 1000) + 1)
  end
end

-- When (us) the next `tokens` can all have gone, none before now.
local function due(tokens)
  local rounds = math.floor((tokens - 1) / cap)
  local index = tokens - 1 - rounds * cap
  local d = at(0)
  newest = d or false
  if not d or d < now then
    d = now
  end
  local slot = at(cap - 1 - index)
  if slot and slot + span > d then
    d = slot + span
  end
  return d + rounds * span
end

-- Record n tokens at t (never before the newest); fold what lies past N into the run.
local function commit(t, n)
  local last = at(0)
  if last and t < last then
    t = last
  end
  prune(now) -- at now, never at a booking's time: a withdrawn booking must not hide a token
  local value = int(t)
  local chunk = {}
  for i = 1, math.min(n, 4000) do
    chunk[i] = value
  end
  local left = n
  while left > 0 do
    if left < #chunk then
      for i = left + 1, #chunk do
        chunk[i] = nil
      end
    end
    redis.call("LPUSH", key, unpack(chunk))
    left = left - #chunk
  end
  plain = plain + n
  len = len + n
  newest = t
  if plain > cap then
    -- The tokens past the N newest decide nothing while the debt stands: one run holds
    -- them, at the newest of their times.
    local over_t = tonumber(redis.call("LINDEX", key, cap))
    local count = plain + run_c - cap
    redis.call("LTRIM", key, 0, cap - 1)
    redis.call("RPUSH", key, int(over_t) .. "*" .. int(count))
    plain, run_t, run_c, len = cap, over_t, count, cap + 1
  end
  expire()
  return t
end

local reply
if op == "R" then
  local n, max_wait = tonumber(ARGV[5]), tonumber(ARGV[6])
  local wait = due(n) - now
  if max_wait >= 0 and wait > max_wait then
    reply = "0 " .. int(wait) .. " 0"
  else
    reply = "1 " .. int(wait) .. " " .. int(commit(now + wait, n))
  end
elseif op == "C" then
  reply = int(commit(now, tonumber(ARGV[5])))
elseif op == "F" then
  local n, mark = tonumber(ARGV[5]), tonumber(ARGV[6])
  prune(now)
  local back = 0
  if mark < 0 then
    back = math.min(n, run_c)
    if back > 0 then
      if back == run_c then
        redis.call("RPOP", key)
        run_t, run_c, len = nil, 0, len - 1
      else
        run_c = run_c - back
        redis.call("LSET", key, -1, int(run_t) .. "*" .. int(run_c))
      end
    end
    local take = math.min(n - back, plain)
    if take > 0 then -- the run is gone (it held fewer than n): drop the oldest plain tokens
      if take == plain then
        redis.call("DEL", key)
      else
        redis.call("LTRIM", key, 0, plain - take - 1)
      end
      plain = plain - take
      back = back + take
    end
  else
    back = redis.call("LREM", key, n, int(mark))
    plain = plain - back
    if back < n and run_t and mark <= run_t then
      local extra = math.min(n - back, run_c)
      run_c = run_c - extra
      back = back + extra
      if run_c == 0 then
        redis.call("RPOP", key)
        run_t = nil
      else
        redis.call("LSET", key, -1, int(run_t) .. "*" .. int(run_c))
      end
    end
  end
  reply = int(back)
elseif op == "S" then
  local start = now - span
  local held = newer_than(start)
  if run_t and run_t > start then
    held = held + run_c
  end
  local last = at(0)
  local left = last and last + span - now or 0
  reply = int(held) .. " " .. int(left > 0 and left or 0)
else
  return redis.error_reply("ERR ratekeeper: unknown op " .. tostring(op))
end
return int(now) .. " " .. reply
