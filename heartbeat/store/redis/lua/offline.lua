-- Takes one device offline: emits the device's event, then the user's if that was
-- their last online device, and counts the user out of ``count`` (false where the
-- count lives in another slot: a Cluster adjusts it afterwards). Returns 1 when
-- the user went offline, else 0 (also for a device that was not online: nothing
-- is emitted).
local function offline(count, key, devices, online, userid, clientid)
  if redis.call('SREM', online, clientid) == 0 then return 0 end
  local device = redis.call('HGET', devices, clientid)
  local space = device and string.find(device, ' ', 1, true)
  if space then
    local time, status = tonumber(string.sub(device, 1, space - 1)), string.sub(device, space + 1)
    emit(key, cjson.encode({userid = userid, clientid = clientid, online = false,
      time = time, status = status}))
    record('device_offline', userid, clientid, time, status, false)
  end
  if redis.call('SCARD', online) > 0 then return 0 end
  if count then redis.call('DECR', count) end
  local user = redis.pcall('HMGET', key, 'time', 'status')
  if not user.err and user[1] and user[2] then
    emit(key, cjson.encode({userid = userid, online = false,
      time = tonumber(user[1]), status = user[2]}))
    record('offline', userid, nil, tonumber(user[1]), user[2], false)
  end
  return 1
end
