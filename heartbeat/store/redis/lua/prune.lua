-- Forgets the devices offline and last seen before a time (DEVICE_RETENTION).
-- KEYS: per user their devices hash and online set. ARGV: the time. Returns how
-- many devices were forgotten. The user's own time and status stay.
local cutoff = tonumber(ARGV[1])
local gone = 0
for i = 1, #KEYS, 2 do
  local devices = redis.pcall('HGETALL', KEYS[i])
  if not devices.err then
    for j = 1, #devices, 2 do
      local space = string.find(devices[j + 1], ' ', 1, true)
      local seen = space and tonumber(string.sub(devices[j + 1], 1, space - 1))
      if seen and seen < cutoff and redis.call('SISMEMBER', KEYS[i + 1], devices[j]) == 0 then
        redis.call('HDEL', KEYS[i], devices[j])
        gone = gone + 1
      end
    end
  end
end
return gone
