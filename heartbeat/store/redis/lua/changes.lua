--! needs: now
-- The change feed's read (one Redis). KEYS: the feed's stream, its epoch key. ARGV:
-- an epoch to keep if the feed has none yet, where to read after ('' for the oldest
-- kept), the most entries (0 or less: none, only the tip), the retention (ms). Returns the
-- epoch, the time (ms), the floor (every entry added after this read is above it),
-- the newest entry's id ('' for none) and the entries.
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
end
local now_ms = math.floor(now * 1000)
local entries = {}
if tonumber(ARGV[3]) > 0 then
  local start = '(' .. ARGV[2]
  if ARGV[2] == '' then start = (now_ms - tonumber(ARGV[4])) .. '-0' end
  entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', tonumber(ARGV[3]))
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
return {epoch, tostring(now_ms), (now_ms - 1) .. '-18446744073709551615',
  last[1] and last[1][1] or '', entries}
