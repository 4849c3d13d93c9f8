-- ratekeeper: a sliding window (at most N tokens in any window of T), one decision per call.
--
-- The same arithmetic as ratekeeper/_window.py (SlidingLog), with the time read from the
-- server (TIME, in microseconds). A grant of n tokens at t counts in every window that
-- contains t; tokens granted at t may go again at t + T.
--
-- KEYS[1] the window: a list of the times (us) of its tokens, newest first, one element per
--         token; its first element may instead be "t*c": c tokens counted at t, older than
--         all the others (a debt past N, kept as one count at the newest of its times, which
--         is never earlier than their own). At most N + 1 elements. Times that have left the
--         window may stay in the list until a call counts them (they decide nothing). The
--         key expires at the latest a quarter of a window after its newest token has left
--         the window; a missing key is an empty window.
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
local op = ARGV[4]

-- The expiry: the key lives until the end of the quarter window (us, counted from 0) that
-- holds its newest token, plus a window. So a new newest token in the same quarter needs no
-- PEXPIRE; the key outlives its tokens by at most a quarter window.
local quarter = math.floor(span / 4) + 1

local function expire_after(newest)
  local ends = (math.floor(newest / quarter) + 1) * quarter + span
  redis.call("PEXPIRE", key, math.floor((ends - now) / 1000) + 1)
end

-- The common case first, inline (the fewest commands, no formatting): a reserve of n <= N
-- tokens on a window with no debt's run (the head is a plain time). The slot that decides is
-- the n-th of the N newest tokens (the element at N - n); the newest bounds the grant from
-- below. It records the grant here when that slot is free or has left the window at now:
-- then the tokens go at max(now, newest), and the slot and every older element (all out of
-- the window) drop with one LTRIM. A grant that must wait for its slot is left to the
-- general code below (it may fold tokens into a run), as is everything else.
if op == "R" then
  local n = tonumber(ARGV[5])
  if n <= cap and n <= 1000 then
    local head = redis.call("LINDEX", key, 0)
    if not (head and string.find(head, "*", 1, true)) then
      local newest, slot = nil, nil
      if head then
        newest = tonumber(head)
        if n == cap then
          slot = newest
        else
          slot = redis.call("LINDEX", key, cap - n)
          slot = slot and tonumber(slot)
        end
      end
      local due, value = now, now_s
      if newest and newest > now then
        due, value = newest, head
      end
      local gone = not slot or slot + span <= now
      if not gone and slot + span > due then
        due = slot + span
      end
      local wait = due - now
      local max_wait = tonumber(ARGV[6])
      if max_wait >= 0 and wait > max_wait then
        return now_s .. " 0 " .. string.format("%.0f", wait) .. " 0"
      end
      if gone then
        if n == 1 then
          redis.call("LPUSH", key, value)
        else
          local values = {}
          for i = 1, n do
            values[i] = value
          end
          redis.call("LPUSH", key, unpack(values))
        end
        if slot then
          redis.call("LTRIM", key, 0, cap - 1)
        end
        if not newest or math.floor(newest / quarter) ~= math.floor(due / quarter) then
          expire_after(due)
        end
        return now_s .. " 1 " .. (wait == 0 and "0" or string.format("%.0f", wait)) .. " " .. value
      end
    end
  end
end

local function int(x)
  return string.format("%.0f", x)
end

-- The head: a run "t*c" of the debt, or the newest plain token.
local len = redis.call("LLEN", key)
local run_t, run_c, off = nil, 0, 0 -- off: 1 while the run is the list's first element
if len > 0 then
  local head = redis.call("LINDEX", key, 0)
  local star = string.find(head, "*", 1, true)
  if star then
    run_t = tonumber(string.sub(head, 1, star - 1))
    run_c = tonumber(string.sub(head, star + 1))
    off = 1
  end
end
local plain = len - off
local newest = nil -- the newest token's time, read once (false: none)

-- The time of the token p places from the newest (0: the newest), or nil.
local function at(p)
  if p == 0 and newest ~= nil then
    return newest or nil
  end
  if p < plain then
    return tonumber(redis.call("LINDEX", key, off + p))
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
    if tonumber(redis.call("LINDEX", key, off + mid)) > start then
      lo = mid + 1
    else
      hi = mid
    end
  end
  return lo
end

local function write_run()
  redis.call("LSET", key, 0, int(run_t) .. "*" .. int(run_c))
end

local function drop_run()
  redis.call("LPOP", key)
  run_t, run_c, off = nil, 0, 0
  newest = nil
end

-- Drop the tokens that have slid out of the window that ends at `t`.
local function prune(t)
  local start = t - span
  if run_t then
    if run_t > start then
      return -- every plain token is newer than the run
    end
    drop_run()
  end
  if plain == 0 or tonumber(redis.call("LINDEX", key, -1)) > start then
    return
  end
  local keep = newer_than(start)
  if keep == 0 then
    redis.call("DEL", key)
  else
    redis.call("LTRIM", key, 0, keep - 1)
  end
  plain = keep
  newest = nil
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
  if run_t then
    redis.call("LPOP", key) -- the run goes back on top below
    off = 0
  end
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
  newest = t
  if plain > cap then
    -- The tokens past the N newest decide nothing while the debt stands: one run holds
    -- them, at the newest of their times.
    local over_t = tonumber(redis.call("LINDEX", key, cap))
    redis.call("LTRIM", key, 0, cap - 1)
    run_t, run_c, plain = over_t, plain + run_c - cap, cap
  end
  if run_t then
    redis.call("LPUSH", key, int(run_t) .. "*" .. int(run_c))
    off = 1
  end
  expire_after(t)
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
        drop_run()
      else
        run_c = run_c - back
        write_run()
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
    back = redis.call("LREM", key, n, int(mark)) -- never the run: it holds a "*"
    plain = plain - back
    if back < n and run_t and mark <= run_t then
      local extra = math.min(n - back, run_c)
      run_c = run_c - extra
      back = back + extra
      if run_c == 0 then
        drop_run()
      else
        write_run()
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
return now_s .. " " .. reply
