-- Stores one ping: the user's time and status, the device's, the device online and
-- its deadline armed (``member`` in ``deadlines``), and the event emitted. A ping
-- with no message hides: its deadline is armed, but to watchers its device goes
-- offline (as a sweep would take it), and nothing of it is stored. ``count`` as in
-- offline(). Returns a code of codes.lua, or the error that kept it from being
-- stored. A step each ping must take (a bound on a user's devices) goes here.
local function store_ping(count, key, devices, online, deadlines, userid, time, status,
                          clientid, member, message, deadline)
  if message == '' then
    redis.call('ZADD', deadlines, deadline, member)
    if offline(count, key, devices, online, userid, clientid) == 1 then return WENT_OFFLINE end
    return HIDDEN
  end
  local stored = redis.pcall('HSET', key, 'time', time, 'status', status)
  if type(stored) == 'table' and stored.err then return stored.err end
  redis.call('HSET', devices, clientid, time .. ' ' .. status)
  local came = redis.call('SADD', online, clientid) == 1 and redis.call('SCARD', online) == 1
  if came and count then redis.call('INCR', count) end
  redis.call('ZADD', deadlines, deadline, member)
  emit(key, message)
  if came then return CAME_ONLINE end
  return STORED
end
