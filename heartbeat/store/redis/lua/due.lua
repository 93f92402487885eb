--! needs: now
-- The sweep's read: KEYS: deadline partitions, then each one's online count (all of
-- them on one Redis, one on a Cluster node). ARGV: the most entries to take from one
-- partition. Returns the users online (the counts' sum), 1 if a count was missing
-- (else 0), then per due entry its partition's place in KEYS (from 0), member and
-- deadline. A count is only ever 0 or more, never deleted: one missing means Redis
-- lost its data (a restart without persistence, a flush), so it is put back at 0 and
-- said, for the instances to read again what their streams watch. Otherwise reads
-- only: expire.lua claims each entry, so instances sweeping at once take it offline once.
local partitions = #KEYS / 2
local out = {0, 0}
local users = 0
for i = 1, partitions do
  local count = redis.call('GET', KEYS[partitions + i])
  if not count then
    redis.call('SET', KEYS[partitions + i], 0)
    out[2] = 1
  end
  users = users + (tonumber(count) or 0)
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
