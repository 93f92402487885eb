-- Records one change in the change feed (SPEC §8), in the step that makes it: a
-- stream entry (type, user, time, status, online 1/0, at in ms, and the device for a
-- device's change), the stream trimmed of entries past the retention as it goes and
-- expiring (twice the retention) with its last change, so a Cluster slot's stream that
-- stops changing leaves nothing behind. An erasure deletes the user's entries (SPEC
-- §2: all but its one erased change): on one Redis each user's are also listed under
-- ``own_changes`` (the list drops what the trim took); a Cluster's slot stream is read
-- whole instead (layout_cluster.lua). Returns the change's position: on one
-- Redis ``<epoch>_<id>`` (feed.py's; the epoch key is feed.feed_keys's, made here if no
-- reader has made it yet), in a Cluster the entry's id (layout_cluster.lua). Each call
-- counts in ``recorded``, which a script that records returns last (RedisFeed.counted):
-- the changes this instance made, for /metrics, at no extra command.
local feed_epoch
local recorded = 0
local function own_changes(userid)
  return FEED .. ':of:' .. userid
end
-- Whether stream id ``a`` is older than ``b`` (both ``<ms>-<seq>``).
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, bm = tonumber(am), tonumber(bm)
  return am < bm or (am == bm and tonumber(as) < tonumber(bs))
end
local function list_own(userid, id)
  local own = own_changes(userid)
  redis.call('RPUSH', own, id)
  local first = redis.call('XRANGE', FEED, '-', '+', 'COUNT', 1)[1]
  local head = redis.call('LINDEX', own, 0)
  while first and head and older(head, first[1]) do
    redis.call('LPOP', own)
    head = redis.call('LINDEX', own, 0)
  end
  redis.call('PEXPIRE', own, 2 * FEED_RETENTION)
end
-- Deletes every change of ``userid`` in the feed (an erasure's first step).
local function forget_own(userid)
  if not FEED_OWN_LISTS then
    local start = '-'
    repeat
      local found = redis.call('XRANGE', FEED, start, '+', 'COUNT', 1000)
      local ids = {}
      for _, entry in ipairs(found) do
        if entry[2][4] == userid then ids[#ids + 1] = entry[1] end
      end
      if #ids > 0 then redis.call('XDEL', FEED, unpack(ids)) end
      if #found > 0 then start = '(' .. found[#found][1] end
    until #found < 1000
    return
  end
  local own = own_changes(userid)
  local ids = redis.call('LRANGE', own, 0, -1)
  for i = 1, #ids, 1000 do
    redis.call('XDEL', FEED, unpack(ids, i, math.min(i + 999, #ids)))
  end
  redis.call('DEL', own)
end
local function record(kind, userid, clientid, time, status, online)
  local at = math.floor(now * 1000)
  local entry = {'XADD', FEED, 'MINID', '~', at - FEED_RETENTION, '*', 't', kind,
    'u', userid, 'tm', time, 's', status, 'o', online and '1' or '0', 'at', at}
  if clientid then
    entry[#entry + 1] = 'c'
    entry[#entry + 1] = clientid
  end
  local id = redis.call(unpack(entry))
  recorded = recorded + 1
  redis.call('PEXPIRE', FEED, 2 * FEED_RETENTION)
  if FEED_OWN_LISTS and kind ~= 'erased' then list_own(userid, id) end
  if not FEED_EPOCH then return id end
  if not feed_epoch then
    feed_epoch = redis.call('GET', FEED_EPOCH)
    if not feed_epoch then
      feed_epoch = string.format('%x%05x', tonumber(clock[1]), tonumber(clock[2]))
      redis.call('SET', FEED_EPOCH, feed_epoch)
    end
  end
  return feed_epoch .. '_' .. id
end
-- ``message`` (a JSON object) with the positions of the changes it tells: its
-- ``feed`` field, {"user": <position>, "device": <position>}, each only if that view
-- changed (an empty object: it is no change). Another service's message has none, so
-- a reader knows nothing of positions from it.
local function with_feed(message, user, device)
  local fields = {}
  if user then fields[#fields + 1] = '"user":"' .. user .. '"' end
  if device then fields[#fields + 1] = '"device":"' .. device .. '"' end
  return string.sub(message, 1, -2) .. ',"feed":{' .. table.concat(fields, ',') .. '}}'
end
