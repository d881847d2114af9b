-- A socket's viewer changed (it signed in): count the new viewer, and drop the
-- old one when it was the old viewer's last tab in this process.
-- KEYS: the video's set, its tally.
-- ARGV: new member, old member ('' to keep it), ttl, key ttl, channel, video id.
sweep(KEYS[1], KEYS[2])
local changed = add(KEYS[1], KEYS[2], ARGV[1], now + tonumber(ARGV[3]))
if ARGV[2] ~= '' and remove(KEYS[1], KEYS[2], ARGV[2]) then
  changed = true
end
keep(KEYS[1], KEYS[2], ARGV[4])
if changed then
  redis.call('PUBLISH', ARGV[5], ARGV[6])
end
return 1
