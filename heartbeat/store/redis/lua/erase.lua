--! needs: now emit feed
-- Erases a user (DELETE /users/{id}): every key of theirs, their erased change in the
-- feed and the erased event emitted, one atomic step; a step an erasure must take
-- goes here. KEYS: the user's key, devices hash, online set, then on one Redis their
-- deadline partition and its online count, on a Cluster their own deadlines (the
-- partition's index entries are another slot's: the sweep drops them, finding nothing
-- behind), then the feed. ARGV: the erased event, the user, then on one Redis the
-- deadline members of the devices known, then the feed's retention. The feed's earlier
-- entries of the user are deleted, so only the erased change is left. Returns 1 when
-- the user was online (a Cluster adjusts the count afterwards), else 0, then the
-- changes recorded (feed.lua).
local online = redis.call('EXISTS', KEYS[3]) == 1
if #KEYS == 6 then
  for i = 3, #ARGV - 1 do redis.call('ZREM', KEYS[4], ARGV[i]) end
  if online then redis.call('DECR', KEYS[5]) end
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
else
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
end
forget_own(ARGV[2])
emit(KEYS[1], with_feed(ARGV[1], record('erased', ARGV[2], false, 0, '', false), nil))
return {online and 1 or 0, recorded}
