--! needs: now
-- The sweep's read: KEYS: deadline partitions, then each one's online count (all of
-- them on one Redis, one on a Cluster node). ARGV: the most entries to take from one
-- partition. Returns the users online (the counts' sum), then per due entry its
-- partition's place in KEYS (from 0), member and deadline. Reads only: expire.lua
-- claims each entry, so instances sweeping at once take it offline once.
local partitions = #KEYS / 2
local out = {0}
local users = 0
for i = 1, partitions do
  users = users + (tonumber(redis.call('GET', KEYS[partitions + i])) or 0)
  local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', string.format('%.6f', now),
    'WITHSCORES', 'LIMIT', 0, ARGV[1])
  for j = 1, #due, 2 do
    out[#out + 1] = i - 1
    out[#out + 1] = due[j]
    out[#out + 1] = due[j + 1]
  end
end
out[1] = users
return out
