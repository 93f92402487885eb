-- Records one change in the change feed (SPEC §8), in the step that makes it: a
-- stream entry (type, user, time, status, online 1/0, at in ms, and the device for a
-- device's change), the stream trimmed of entries past the retention as it goes. A
-- layout with no feed (FEED false: a Cluster) records nothing. Returns the change's
-- position (``<epoch>_<id>``, feed.py's; the epoch key is feed.feed_keys's, made
-- here if no reader has made it yet), or nil with no feed.
local feed_epoch
local function record(kind, userid, clientid, time, status, online)
  if not FEED then return nil end
  local at = math.floor(now * 1000)
  local entry = {'XADD', FEED, 'MINID', '~', at - FEED_RETENTION, '*', 't', kind,
    'u', userid, 'tm', time, 's', status, 'o', online and '1' or '0', 'at', at}
  if clientid then
    entry[#entry + 1] = 'c'
    entry[#entry + 1] = clientid
  end
  local id = redis.call(unpack(entry))
  if not feed_epoch then
    feed_epoch = redis.call('GET', FEED .. ':epoch')
    if not feed_epoch then
      feed_epoch = string.format('%x%05x', tonumber(clock[1]), tonumber(clock[2]))
      redis.call('SET', FEED .. ':epoch', feed_epoch)
    end
  end
  return feed_epoch .. '_' .. id
end
-- ``message`` (a JSON object) with the positions of the changes it tells: its
-- ``feed`` field, {"user": <position>, "device": <position>}, each only if that view
-- changed (an empty object: it is no change). With no feed it is left as it is, so a
-- reader knows nothing of positions from it (nor from another service's message).
local function with_feed(message, user, device)
  if not FEED then return message end
  local fields = {}
  if user then fields[#fields + 1] = '"user":"' .. user .. '"' end
  if device then fields[#fields + 1] = '"device":"' .. device .. '"' end
  return string.sub(message, 1, -2) .. ',"feed":{' .. table.concat(fields, ',') .. '}}'
end
