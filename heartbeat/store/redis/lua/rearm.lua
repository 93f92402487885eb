--! needs: now
-- Moves deadlines, for presence streams (core.holder): each device that has a
-- deadline (online, or hiding) is due ARGV[1] seconds from now; a device with none
-- (offline, left) is left alone, so a renewal never brings one back. Nothing is
-- emitted and nothing else changes. KEYS: per device the deadlines holding it.
-- ARGV: the seconds, then per device its member there. Returns the deadline set.
local deadline = string.format('%.6f', now + tonumber(ARGV[1]))
for i = 1, #KEYS do redis.call('ZADD', KEYS[i], 'XX', deadline, ARGV[i + 1]) end
return deadline
