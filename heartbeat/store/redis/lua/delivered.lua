-- A webhook URL's progress, recorded only by the instance that holds its claim (so one
-- that lost it, paused past its lease, cannot move it back). KEYS: the claim, the
-- delivered positions. ARGV: the instance ('' for no check), the URL, the position.
-- Returns 1 when recorded, else 0.
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
