-- Prepended to every presence script: expiries are on Redis's own clock, so
-- processes need not agree on the time.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
