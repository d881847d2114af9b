-- The heartbeat for one address's sockets (the per-address cap).
-- KEYS[1]: the address's sockets. ARGV: ttl, key ttl, sockets...
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local expires = now + tonumber(ARGV[1])
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], expires, ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
