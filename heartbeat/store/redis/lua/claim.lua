-- A webhook URL's claim (one instance delivers it at a time). KEYS: the claim. ARGV:
-- the instance, how long the claim lasts (ms). Taken when free, renewed when already
-- held; a dead instance's lapses. Returns 1 when the instance holds it, else 0.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
