-- One Redis only. KEYS: the user's key, devices hash, online set, deadline partition
-- and its count. ARGV: the user's latest time and status, then per device its id,
-- "time status", deadline ('' for one offline) and deadline member. Puts back a user
-- another store kept (python -m heartbeat.store.export), emitting nothing. Returns 1.
redis.call('HSET', KEYS[1], 'time', ARGV[1], 'status', ARGV[2])
local was = redis.call('SCARD', KEYS[3])
for i = 3, #ARGV, 4 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  if ARGV[i + 2] ~= '' then
    redis.call('SADD', KEYS[3], ARGV[i])
    redis.call('ZADD', KEYS[4], ARGV[i + 2], ARGV[i + 3])
  end
end
if was == 0 and redis.call('SCARD', KEYS[3]) > 0 then redis.call('INCR', KEYS[5]) end
return 1
