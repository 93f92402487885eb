--! needs: now
-- Cluster only: arms deadline index entries (see cluster_topology). KEYS: a
-- partition. ARGV: the timeout, then index members. Returns the time armed.
local deadline = string.format('%.6f', now + tonumber(ARGV[1]))
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], deadline, ARGV[i]) end
return deadline
