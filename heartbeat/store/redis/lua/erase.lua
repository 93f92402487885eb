--! needs: emit
-- Erases a user (DELETE /users/{id}): every key of theirs, then the erased event
-- emitted, one atomic step; a step an erasure must take (the change feed's) goes here.
-- KEYS: the user's key, devices hash, online set, then on one Redis their deadline
-- partition and its online count, on a Cluster their own deadlines (the partition's
-- index entries are another slot's: the sweep drops them, finding nothing behind).
-- ARGV: the erased event, then (one Redis) the deadline members of the devices known.
-- Returns 1 when the user was online (a Cluster adjusts the count afterwards).
local online = redis.call('EXISTS', KEYS[3]) == 1
if #KEYS == 5 then
  for i = 2, #ARGV do redis.call('ZREM', KEYS[4], ARGV[i]) end
  if online then redis.call('DECR', KEYS[5]) end
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
else
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
end
emit(KEYS[1], ARGV[1])
if online then return 1 end
return 0
