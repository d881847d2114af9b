-- Members leave a video.
-- KEYS: the video's set, its tally. ARGV: channel, video id, members...
local left = false
for i = 3, #ARGV do
  if remove(KEYS[1], KEYS[2], ARGV[i]) then
    left = true
  end
end
if left then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return 1
