-- Cluster only: the sweep's last step in a partition (see cluster_topology).
-- KEYS: a partition and its online count. ARGV: users gone offline, then per entry
-- its member, the time due.lua read and the time to move it to ('' drops it). An
-- entry armed again since (its time changed) is left.
for i = 2, #ARGV, 3 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    if ARGV[i + 2] == '' then redis.call('ZREM', KEYS[1], ARGV[i])
    else redis.call('ZADD', KEYS[1], ARGV[i + 2], ARGV[i]) end
  end
end
if ARGV[1] ~= '0' then redis.call('DECRBY', KEYS[2], ARGV[1]) end
return 1
