-- Move the pending views into a new in-flight batch.
-- KEYS: pending, batches set, the new batch, epoch. ARGV: batch id.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[3])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[4])
return 1
