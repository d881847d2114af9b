-- The epoch, pending counts and every in-flight batch's counts, for the ids in ARGV[2..].
-- KEYS: pending, batches set, epoch. ARGV[1]: the batch key prefix.
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
local out = {redis.call('GET', KEYS[3]) or '0', redis.call('HMGET', KEYS[1], unpack(ids))}
for _, batch in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  out[#out + 1] = batch
  out[#out + 1] = redis.call('HMGET', ARGV[1] .. batch, unpack(ids))
end
return out
