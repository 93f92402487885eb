-- A Redis Cluster: a message stays in the shard of the user's slot.
local PUBLISH = 'SPUBLISH'
