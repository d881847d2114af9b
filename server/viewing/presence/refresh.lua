-- The heartbeat: push members' expiry TTL ahead, re-adding any Redis lost.
-- KEYS: the video's set, its tally. ARGV: ttl, key ttl, members...
sweep(KEYS[1], KEYS[2])
local expires = now + tonumber(ARGV[1])
for i = 3, #ARGV do
  add(KEYS[1], KEYS[2], ARGV[i], expires)
end
keep(KEYS[1], KEYS[2], ARGV[2])
return 1
