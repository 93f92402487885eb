-- One Redis (or a Sentinel's master): every key in one keyspace, plain pub/sub.
local PUBLISH = 'PUBLISH'
-- The deadlines a ping arms are the very partition the sweep reads.
local function index_holds(deadlines, member)
  return true
end
