-- One hit on several sliding-window limits at once, on Redis's clock.
-- KEYS[i]: a sorted set of the hits inside limit i's window (score: time in ms).
-- ARGV[1]: this hit's unique member; ARGV[2i], ARGV[2i+1]: limit i's count and window (ms).
-- Returns 0 when the hit is recorded on every key, else the milliseconds until the
-- fullest limit frees a place; a refused hit is recorded nowhere.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local wait = 0
for i, key in ipairs(KEYS) do
  local count = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local held = redis.call('ZCARD', key)
  if held >= count then
    -- A place frees when the hit at this rank leaves the window.
    local rank = held - count
    local oldest = redis.call('ZRANGE', key, rank, rank, 'WITHSCORES')
    local free = tonumber(oldest[2]) + window - now
    if free > wait then
      wait = free
    end
  end
end
if wait > 0 then
  return wait
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, tonumber(ARGV[2 * i + 1]))
end
return 0
