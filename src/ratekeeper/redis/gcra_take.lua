-- ratekeeper: the common case of gcra.lua as a short script: one key, one limit, one
-- reserve (take `tokens` now, or book the slot they are due at, within max_wait).
--
-- The same key format, arithmetic and reply as gcra.lua for that one request (a
-- differential test holds the two, and both to the Python core). Whatever is not that
-- common case it leaves to gcra.lua, changing nothing: a key holding a limit of its own, or
-- a value of another type or form, gets the reply "" and the caller asks gcra.lua.
--
-- Its helpers (since, fdiv, cdiv) are gcra.lua's, written out again: a script loaded by its
-- SHA cannot include another.
--
-- KEYS[1] the bucket: "e t a g b", as in gcra.lua
-- ARGV[1] "" to read the time with TIME, or a time in us (tests only: then no TTL is set)
-- ARGV[2..4] the limit: cost, scale, capacity (as gcra.lua's ARGV[2] has them)
-- ARGV[5] the tokens to take
-- ARGV[6] max_wait_ns: the longest wait to book (-1: any; 0: take now or refuse)
-- Returns "now_us status wait_ns e g ahead" as gcra.lua does for "R 1 max_wait 1 tokens"
-- (status 1 granted, wait_ns from now; 0 refused, nothing changed: the wait exceeds
-- max_wait; 2 beyond 2^52 units, refused), or "".

if redis.replicate_commands then
  redis.replicate_commands() -- Redis 5/6: replicate effects, as TIME is not deterministic
end

local MAX_AHEAD = 4503599627370496 -- 2^52

local test_now = ARGV[1] ~= ""
local now_us
if test_now then
  now_us = tonumber(ARGV[1])
else
  local time = redis.call("TIME")
  now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local cost, scale = tonumber(ARGV[2]), tonumber(ARGV[3])
local burst = tonumber(ARGV[4]) * cost
local tokens = tonumber(ARGV[5])
local max_wait = tonumber(ARGV[6])

local e, g, ahead, booked = now_us, 0, 0, 0
local raw = redis.pcall("GET", KEYS[1])
if raw then
  if type(raw) ~= "string" then
    return "" -- another type: gcra.lua refuses it
  end
  local se, t, a, sg, b = string.match(raw, "^(%d+) (%d+) (%d+) (%d+) ?(%d*)$")
  if not se then
    return "" -- a key holding its own limit, or not a bucket: gcra.lua decides
  end
  e, g = tonumber(se), tonumber(sg)
  local step = 1000 * scale
  local elapsed = now_us - tonumber(t)
  -- As gcra.lua: x - elapsed * step, floored at 0, never forming a product past 2^53.
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
  ahead = since(tonumber(a))
  if b ~= "" then
    booked = since(tonumber(b))
  end
end

-- floor(x / y) for integers with |x| + y < 2^53 and y > 0 (gcra.lua's fdiv), and ceil.
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

local function reply(status, code, value, left)
  return string.format("%.0f %d %.0f %.0f %.0f %.0f", now_us, status, code, e, value, left)
end

local due = ahead + tokens * cost - burst
local wait = 0
if due > 0 then
  wait = cdiv(due, scale)
  if max_wait >= 0 and wait > max_wait then
    return reply(0, wait, g, ahead) -- refused, nothing changed
  end
end
local new = ahead + tokens * cost
if new > MAX_AHEAD then
  return reply(2, 1, g, ahead)
end
g = g + tokens
-- A slot ahead is promised to a sleeper (Gcra._book): remember the latest.
if wait > 0 and wait * scale > booked then
  booked = wait * scale
end
local value = string.format("%.0f %.0f %.0f %.0f %.0f", e, now_us, new, g, booked)
if test_now then
  redis.call("SET", KEYS[1], value)
else
  -- Expire when the bucket is full again (ms, rounded up, + 1 so it outlives this ms).
  redis.call("SET", KEYS[1], value, "PX", cdiv(new, 1000000 * scale) + 1)
end
return reply(1, wait, g, new)
