-- A Cluster's change-feed epoch (feed.ClusterReader; one Redis reads it in changes.lua).
-- KEYS: the epoch key. ARGV: an epoch to keep if the feed has none yet. Returns the epoch.
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
return epoch
