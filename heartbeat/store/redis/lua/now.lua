-- The server's clock, which every instance shares: deadlines never depend on
-- whose clock took the ping.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
