-- KEYS: the video's set, its tally. Returns the distinct viewers now.
sweep(KEYS[1], KEYS[2])
return redis.call('HLEN', KEYS[2])
