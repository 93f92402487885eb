-- KEYS: per user their key, devices hash and online set. Returns per user [time,
-- status, devices as field/value pairs, online devices] (nils and empty lists when
-- absent, or when a key holds something else). Reads only.
local states = {}
for i = 1, #KEYS / 3 do
  local ping = redis.pcall('HMGET', KEYS[3 * i - 2], 'time', 'status')
  if ping.err then ping = {false, false} end
  local devices = redis.pcall('HGETALL', KEYS[3 * i - 1])
  if devices.err then devices = {} end
  local online = redis.pcall('SMEMBERS', KEYS[3 * i])
  if online.err then online = {} end
  states[i] = {ping[1], ping[2], devices, online}
end
return states
