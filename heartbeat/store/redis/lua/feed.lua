-- Records one change in the change feed (SPEC §8), in the step that makes it: a
-- stream entry (type, user, time, status, online 1/0, at in ms, and the device for a
-- device's change), the stream trimmed of entries past the retention as it goes. A
-- layout with no feed (FEED false: a Cluster) records nothing.
local function record(kind, userid, clientid, time, status, online)
  if not FEED then return end
  local at = math.floor(now * 1000)
  local entry = {'XADD', FEED, 'MINID', '~', at - FEED_RETENTION, '*', 't', kind,
    'u', userid, 'tm', time, 's', status, 'o', online and '1' or '0', 'at', at}
  if clientid then
    entry[#entry + 1] = 'c'
    entry[#entry + 1] = clientid
  end
  redis.call(unpack(entry))
end
