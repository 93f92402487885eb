#!lua flags=no-writes,allow-cross-slot-keys
--! needs: now
-- The change feed's read on one master of a Cluster (feed.ClusterReader): the streams
-- of the slots it holds, named in ARGV (KEYS are one slot's at most, so none; or the
-- one stream, to read it alone through the cluster's routing, which follows MOVED and
-- ASK). ARGV: where to read from ('' for the oldest kept, else a stream id), how many
-- of the streams (the first ones) read after it rather than from it, the most entries
-- per stream (0: none, only the time), the retention
-- (ms), the last millisecond to read ('' for all), then the streams. Each stream is read
-- by pcall: one this node cannot serve (a slot migrating away whose stream has left,
-- one no longer held) gives its error rather than looking empty. Returns the time
-- (ms), then per stream that has entries or failed its number (1-based) and its
-- entries or its error's text.
local now_ms = math.floor(now * 1000)
local out = {tostring(now_ms)}
local count = tonumber(ARGV[3])
if count <= 0 then return out end
local from, after = ARGV[1], tonumber(ARGV[2])
if from == '' then from = (now_ms - tonumber(ARGV[4])) .. '-0' end
local last = ARGV[5]
if last == '' then last = '+' end
for i = 6, #ARGV do
  local found
  if i - 5 <= after then
    found = redis.pcall('XRANGE', ARGV[i], '(' .. from, last, 'COUNT', count)
  else
    found = redis.pcall('XRANGE', ARGV[i], from, last, 'COUNT', count)
  end
  if found.err then
    out[#out + 1] = i - 5
    out[#out + 1] = found.err
  elseif #found > 0 then
    out[#out + 1] = i - 5
    out[#out + 1] = found
  end
end
return out
