--! needs: now emit feed offline
-- The sweep's claim; a step each device going offline must take goes in offline.lua.
-- KEYS: per entry the user's key, devices hash, online set, the deadlines holding the
-- device and, on one Redis, its partition's online count. ARGV: the keys per entry
-- (5, or 4 with no count), then per entry its deadline member, user and device. An
-- entry still due is removed and its device taken offline in the same atomic step,
-- so an entry claimed twice goes offline once. Returns per entry 1 if its user went
-- offline else 0, then its deadline if it is not due yet, else ''; last, the changes
-- recorded (feed.lua).
local stride = tonumber(ARGV[1])
local out = {}
for i = 1, (#ARGV - 1) / 3 do
  local k, a = stride * (i - 1), 3 * i - 1
  local deadlines, member = KEYS[k + 4], ARGV[a]
  local score = redis.call('ZSCORE', deadlines, member)
  local gone, pending = 0, ''
  if score and tonumber(score) <= now then
    redis.call('ZREM', deadlines, member)
    gone = offline(stride == 5 and KEYS[k + 5], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3],
      ARGV[a + 1], ARGV[a + 2])
  elseif score then
    pending = score
  end
  out[2 * i - 1], out[2 * i] = gone, pending
end
out[#out + 1] = recorded
return out
