-- Admit one socket: take a place among its address's sockets, then count its
-- viewer on the video.
-- KEYS: the video's set, its tally, the address's sockets.
-- ARGV: member, socket, ttl, key ttl, sockets allowed per address, channel, video id.
-- Returns the video's distinct viewers, or -1 when the address has no place left.
local expires = now + tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then
  return -1
end
redis.call('ZADD', KEYS[3], expires, ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[4])
sweep(KEYS[1], KEYS[2])
-- Another tab of a viewer this process already counts changes nothing.
if add(KEYS[1], KEYS[2], ARGV[1], expires) then
  redis.call('PUBLISH', ARGV[6], ARGV[7])
end
keep(KEYS[1], KEYS[2], ARGV[4])
return redis.call('HLEN', KEYS[2])
