--! needs: codes now emit feed offline store_ping
-- Stores and emits a batch of pings, each by store_ping (the step to extend).
-- KEYS: per ping the user's key (also their channel), devices hash, online set, the
-- deadlines that arm it and, on one Redis, its partition's online count. ARGV: the
-- timeout, the keys per ping (5, or 4 with no count), the time after which an armed
-- call is refused as STALE ('' when not armed: see cluster_topology), the most devices
-- a user keeps (MAX_DEVICES_PER_USER), then per ping its user, time, status, device,
-- deadline member and message (codec.ping_args).
-- Returns per ping a code of codes.lua or an error's text: the other pings are
-- stored all the same. Not armed, a ping whose index does not hold it, and every
-- later ping of its user in the call, is NEEDS_ARM: kept in order, for the retry.
-- Then the changes recorded (feed.lua).
local timeout, stride = tonumber(ARGV[1]), tonumber(ARGV[2])
local armed = ARGV[3] ~= ''
local limit = tonumber(ARGV[4])
if armed and now > tonumber(ARGV[3]) then
  return redis.error_reply('STALE the deadline index was armed too long ago')
end
local deadline = string.format('%.6f', now + timeout)
local results = {}
local waiting = {}
for i = 1, #KEYS / stride do
  local k, a = stride * (i - 1), 6 * i - 1
  local userid = ARGV[a]
  if not armed and (waiting[userid] or not index_holds(KEYS[k + 4], ARGV[a + 4])) then
    waiting[userid] = true
    results[i] = NEEDS_ARM
  else
    results[i] = store_ping(stride == 5 and KEYS[k + 5], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3],
      KEYS[k + 4], userid, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5],
      deadline, limit)
  end
end
results[#results + 1] = recorded
return results
