-- A Redis Cluster: a message stays in the shard of the user's slot.
local PUBLISH = 'SPUBLISH'
-- The change feed (feed.lua): one stream per user slot (feed.slot_streams), the last key
-- of a script that records changes, and the retention (ms) its last argument. The
-- feed's epoch is another slot's key: a change's position is its entry id, made whole
-- (epoch, slot) by the Python side (feed.ClusterReader).
local FEED, FEED_RETENTION = KEYS[#KEYS], tonumber(ARGV[#ARGV])
local FEED_EPOCH = false
-- A slot's stream holds only that slot's users' changes: an erasure reads it whole to
-- find the user's, so no list is kept (a key no script names would be refused while
-- its slot migrates).
local FEED_OWN_LISTS = false
-- The deadlines a ping arms are the truth in the user's slot; the sweep reads an index
-- in another slot, which holds an entry no later than every deadline the truth holds
-- (cluster_topology). So a device with a deadline may be stored at once; one without
-- needs its index entry armed first.
local function index_holds(deadlines, member)
  return redis.call('ZSCORE', deadlines, member) ~= false
end
