-- ratekeeper: a fixed window (at most N tokens in each window aligned to the clock), one
-- decision per call.
--
-- The same arithmetic as ratekeeper/_fixed.py (FixedCounter), with the time read from the
-- server (TIME: microseconds since the Unix epoch, UTC), so the windows are aligned by the
-- server's clock: window k covers the times t with floor((t + offset) / T) == k.
--
-- KEYS[1] the window: a hash of k, the number of the window counted in, c, its count (above
--         N: debt, carried into the next windows, N per window), and l, "T N", the limit it
--         was counted under. It expires when a window starts that holds nothing (at the next
--         boundary unless in debt); a missing key is an empty window.
-- ARGV[1] "" to read the time with TIME, or a time in us (tests only)
-- ARGV[2] N, the capacity (tokens)
-- ARGV[3] T, the window (us)
-- ARGV[4] the offset (us) added to the time before aligning (east of UTC: positive)
-- ARGV[5] the op, then its numbers:
--   R n max_wait   reserve n tokens for the earliest time they fit, if that is within
--                  max_wait us (-1: any); they count in the window of that time
--   C n            charge: count n tokens now, past N if need be (debt)
--   F n mark       refund up to n tokens of the window numbered `mark`, if it is the one
--                  counted in (-1: of the window counted in, whichever it is)
--   S              state
-- Returns one string of space-separated integers: now, then
--   R  status (1 granted, 0 refused: nothing changed), wait (us), mark (the window's number)
--   C  mark
--   F  tokens given back
--   S  tokens counted in the window now, us until a window starts that holds nothing

if redis.replicate_commands then
  redis.replicate_commands() -- Redis 5/6: replicate effects, as TIME is not deterministic
end

local key = KEYS[1]
local now, now_s
if ARGV[1] == "" then
  local time = redis.call("TIME")
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
  now_s = time[1] .. string.sub("00000" .. time[2], -6) -- as "%.0f" writes it, without it
else
  now_s = ARGV[1]
  now = tonumber(now_s)
end
local cap = tonumber(ARGV[2])
local span = tonumber(ARGV[3])
local offset = tonumber(ARGV[4])
local op = ARGV[5]

-- The state, read once: k, c and l (false: no window counted).
local stored = redis.call("HMGET", key, "k", "c", "l")

-- The common case first, inline (no closures, no formatting): a reserve on a window counted
-- under this limit (or none), in now's window or an earlier one, that fits now (granted at
-- now: in now's window one HINCRBY, its expiry already at the window's end) or is refused.
-- A grant that would wait for a later window, a window counted under another limit or
-- booked ahead, and every other op, take the general code below.
if op == "R" then
  local n = tonumber(ARGV[6])
  local index, count = math.floor((now + offset) / span), 0
  local k_s = stored[1]
  local ours = true
  if k_s then
    local k = tonumber(k_s)
    if stored[3] ~= ARGV[3] .. " " .. ARGV[2] or k > index then
      ours = false
    elseif k == index then
      count = tonumber(stored[2])
    else
      count = math.max(0, tonumber(stored[2]) - (index - k) * cap)
      k_s = false -- an earlier window: now's starts here
    end
  end
  if ours then
    if count + n <= cap then
      if k_s then
        redis.call("HINCRBY", key, "c", ARGV[6])
      else
        k_s = string.format("%.0f", index)
        local c = string.format("%.0f", count + n)
        redis.call("HSET", key, "k", k_s, "c", c, "l", ARGV[3] .. " " .. ARGV[2])
        redis.call("PEXPIRE", key, math.floor(((index + 1) * span - offset - now) / 1000) + 1)
      end
      return now_s .. " 1 0 " .. k_s
    end
    local wait = (index + math.floor((count + n - 1) / cap)) * span - offset - now
    local max_wait = tonumber(ARGV[7])
    if max_wait >= 0 and wait > max_wait then
      return now_s .. " 0 " .. string.format("%.0f", wait) .. " 0"
    end
  end
end

local function int(x)
  return string.format("%.0f", x)
end

local function window_of(t)
  return math.floor((t + offset) / span)
end

local function start_of(k)
  return k * span - offset
end

-- The window counted in and its count, moved on to now's window (never back: a later one
-- is a booking ahead, counted in its own window).
local index, count = window_of(now), 0
local converted = false
if stored[1] then
  local k, c = tonumber(stored[1]), tonumber(stored[2])
  local was_span, was_cap = string.match(stored[3], "^(%d+) (%d+)$")
  was_span, was_cap = tonumber(was_span), tonumber(was_cap)
  if was_span ~= span or was_cap ~= cap then
    -- Counted under another limit (set_rate): as the core's reconfigure, move on to now's
    -- window under that limit, then count what is left in now's window under this one.
    local then_index = math.floor((now + offset) / was_span)
    if then_index > k then
      c = math.max(0, c - (then_index - k) * was_cap)
    end
    k = index
    converted = true
  end
  if k >= index then
    index, count = k, c
  else
    count = math.max(0, c - (index - k) * cap)
  end
end

-- When (us) a window starts that holds nothing (with nothing counted: `index`'s start).
local function empty_at()
  return start_of(index + math.ceil(count / cap))
end

-- Store the state until it no longer matters: until a window starts that holds nothing
-- (with nothing counted, the start of a window booked ahead: until then nothing else goes).
local function save()
  local ends = empty_at()
  if ends <= now then
    redis.call("DEL", key)
  else
    redis.call("HSET", key, "k", int(index), "c", int(count), "l", int(span) .. " " .. int(cap))
    redis.call("PEXPIRE", key, math.floor((ends - now) / 1000) + 1)
  end
end

if converted then
  save() -- stored under this limit now, whatever the op (a read too)
end

-- When (us) n more tokens can go, none before now.
local function due(n)
  local later = math.floor((count + n - 1) / cap)
  if later == 0 and index == window_of(now) then
    return now
  end
  return math.max(start_of(index + later), now)
end

-- Count n tokens in the window of t (or the one counted in, if later); return its number.
local function commit(t, n)
  local k = window_of(t)
  if k > index then
    count = math.max(0, count - (k - index) * cap)
    index = k
  end
  count = count + n
  save()
  return index
end

local reply
if op == "R" then
  local n, max_wait = tonumber(ARGV[6]), tonumber(ARGV[7])
  local wait = due(n) - now
  if max_wait >= 0 and wait > max_wait then
    reply = "0 " .. int(wait) .. " 0"
  else
    reply = "1 " .. int(wait) .. " " .. int(commit(now + wait, n))
  end
elseif op == "C" then
  reply = int(commit(now, tonumber(ARGV[6])))
elseif op == "F" then
  local n, mark = tonumber(ARGV[6]), tonumber(ARGV[7])
  local back = 0
  if mark < 0 or mark == index then
    back = math.min(n, count)
    count = count - back
    save()
  end
  reply = int(back)
elseif op == "S" then
  local left = count > 0 and empty_at() - now or 0
  reply = int(count) .. " " .. int(left)
else
  return redis.error_reply("ERR ratekeeper: unknown op " .. tostring(op))
end
return now_s .. " " .. reply
