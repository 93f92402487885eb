-- One Redis (or a Sentinel's master): every key in one keyspace, plain pub/sub.
local PUBLISH = 'PUBLISH'
-- The change feed (feed.lua): a script that records changes gets the feed's stream as
-- its last key and the retention (ms) as its last argument. The feed's epoch is a key of
-- the same keyspace, so a change's position is made whole here (``<epoch>_<id>``).
local FEED, FEED_RETENTION = KEYS[#KEYS], tonumber(ARGV[#ARGV])
local FEED_EPOCH = FEED and FEED .. ':epoch'
-- Each user's entries are listed (feed.lua's own_changes), for an erasure to find.
local FEED_OWN_LISTS = true
-- The deadlines a ping arms are the very partition the sweep reads.
local function index_holds(deadlines, member)
  return true
end
