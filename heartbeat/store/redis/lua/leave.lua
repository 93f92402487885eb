--! needs: now emit feed offline
-- Takes one device offline at once (its client said goodbye); a step a leave must
-- take goes here. KEYS: the user's key, devices hash, online set, the deadlines
-- holding the device, on one Redis its partition's online count, then the feed.
-- ARGV: the user, the device, its deadline member, the feed's retention. Returns 1
-- when the user went offline (else 0), then the changes recorded (feed.lua).
redis.call('ZREM', KEYS[4], ARGV[3])
local gone = offline(#KEYS == 6 and KEYS[5], KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
return {gone, recorded}
