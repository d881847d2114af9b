-- Forget an applied batch. KEYS: batches set, the batch, epoch. ARGV: batch id.
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('INCR', KEYS[3])
return 1
