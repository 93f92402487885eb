-- A Redis Cluster: a message stays in the shard of the user's slot.
local PUBLISH = 'SPUBLISH'
-- No change feed in a Cluster yet: a script touches one slot, the feed would need its own.
local FEED, FEED_RETENTION = false, 0
-- The deadlines a ping arms are the truth in the user's slot; the sweep reads an index
-- in another slot, which holds an entry no later than every deadline the truth holds
-- (cluster_topology). So a device with a deadline may be stored at once; one without
-- needs its index entry armed first.
local function index_holds(deadlines, member)
  return redis.call('ZSCORE', deadlines, member) ~= false
end
