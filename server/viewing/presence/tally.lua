-- Prepended (after clock.lua) to the scripts that change a video's viewers.
--
-- A video has a sorted set of `{viewer}|{instance}` members, one per viewer per
-- process, scored by when they expire, and a hash (its tally) counting each
-- viewer's members. The number of distinct viewers is the tally's length, read
-- in O(1) however many processes show one viewer the video. Every change to the
-- set goes through add() and remove(), which keep the two in step.

local function viewer_of(member)
  return string.match(member, '^[^|]*')
end

local function add(set, tally, member, expires)
  if redis.call('ZADD', set, expires, member) == 0 then
    return false  -- already there: only its expiry moved
  end
  redis.call('HINCRBY', tally, viewer_of(member), 1)
  return true
end

local function remove(set, tally, member)
  if redis.call('ZREM', set, member) == 0 then
    return false
  end
  local viewer = viewer_of(member)
  if redis.call('HINCRBY', tally, viewer, -1) <= 0 then
    redis.call('HDEL', tally, viewer)
  end
  return true
end

-- Drops expired members. Then, if one of the two keys was lost without the
-- other (deleted by hand, evicted), rebuilds the tally from the set.
local function sweep(set, tally)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', set, '-inf', now)) do
    remove(set, tally, member)
  end
  if redis.call('ZCARD', set) == 0 then
    redis.call('DEL', tally)
  elseif redis.call('EXISTS', tally) == 0 then
    for _, member in ipairs(redis.call('ZRANGE', set, 0, -1)) do
      redis.call('HINCRBY', tally, viewer_of(member), 1)
    end
  end
end

local function keep(set, tally, key_ttl)
  redis.call('EXPIRE', set, key_ttl)
  redis.call('EXPIRE', tally, key_ttl)
end
