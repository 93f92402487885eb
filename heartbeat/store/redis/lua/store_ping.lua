-- A new device has just been stored for the user: if that makes one more than ``limit``
-- (MAX_DEVICES_PER_USER), forgets the one whose last ping is oldest, an offline one if
-- there is one; an online one goes offline first, on its device's streams (never the
-- user's: the ping being stored keeps them online). Its deadline entry stays and sweeps
-- to nothing. Only a new device reads how many there are, and only one past the limit
-- reads them all. Returns true when the device forgotten was online.
local function make_room(key, devices, online, userid, clientid, limit)
  if redis.call('HLEN', devices) <= limit then return false end
  local all = redis.call('HGETALL', devices)
  local victim, oldest, was_online, seen
  for i = 1, #all, 2 do
    if all[i] ~= clientid then
      local space = string.find(all[i + 1], ' ', 1, true)
      local time = tonumber(space and string.sub(all[i + 1], 1, space - 1)) or 0
      local on = redis.call('SISMEMBER', online, all[i]) == 1
      if victim == nil or (was_online and not on) or (on == was_online and time < oldest) then
        victim, oldest, was_online, seen = all[i], time, on, all[i + 1]
      end
    end
  end
  if was_online then
    redis.call('SREM', online, victim)
    local space = string.find(seen, ' ', 1, true)
    local status = space and string.sub(seen, space + 1) or ''
    emit(key, cjson.encode({userid = userid, clientid = victim, online = false,
      time = oldest, status = status}))
    record('device_offline', userid, victim, oldest, status, false)
  end
  redis.call('HDEL', devices, victim)
  return was_online
end

-- Stores one ping: the user's time and status, the device's, the device online and
-- its deadline armed (``member`` in ``deadlines``), and the event emitted. A ping
-- with no message hides: its deadline is armed, but to watchers its device goes
-- offline (as a sweep would take it), and nothing of it is stored. ``count`` as in
-- offline(). Returns a code of codes.lua, or the error that kept it from being
-- stored. A step each ping must take goes here (make_room bounds a user's devices).
local function store_ping(count, key, devices, online, deadlines, userid, time, status,
                          clientid, member, message, deadline, limit)
  if message == '' then
    redis.call('ZADD', deadlines, deadline, member)
    if offline(count, key, devices, online, userid, clientid) == 1 then return WENT_OFFLINE end
    return HIDDEN
  end
  local before = redis.pcall('HGET', key, 'status')
  local stored = redis.pcall('HSET', key, 'time', time, 'status', status)
  if type(stored) == 'table' and stored.err then return stored.err end
  local made_room = redis.call('HSET', devices, clientid, time .. ' ' .. status) == 1
    and make_room(key, devices, online, userid, clientid, limit)
  local arrived = redis.call('SADD', online, clientid) == 1
  local came = arrived and redis.call('SCARD', online) == 1 and not made_room
  if came and count then redis.call('INCR', count) end
  redis.call('ZADD', deadlines, deadline, member)
  -- The feed's rule (heartbeat.core.changes.derive): the user's change, then the device's.
  local user, device
  if came then
    user = record('online', userid, nil, time, status, true)
  elseif before ~= status then
    user = record('status', userid, nil, time, status, true)
  end
  if arrived then device = record('device_online', userid, clientid, time, status, true) end
  emit(key, with_feed(message, user, device))
  if came then return CAME_ONLINE end
  return STORED
end
