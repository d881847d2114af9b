-- Dedup, the per-address cap and the pending increment happen together or not
-- at all, so no crash or retry can count a view twice.
-- KEYS: viewed flag, address counter, pending hash. ARGV: video id, window,
-- address limit, address counter TTL, channel.
if redis.call('EXISTS', KEYS[1]) == 1 then return 'duplicate' end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[3]) then
  return 'ip_limit'
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[2])
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('PUBLISH', ARGV[5], ARGV[1])
return 'counted'
