-- One Redis (or a Sentinel's master): every key in one keyspace, plain pub/sub.
local PUBLISH = 'PUBLISH'
