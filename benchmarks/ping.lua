-- wrk script for the ping-rate scenario: every request is a ping for the next of N
-- distinct users (so a server cannot win by caching one user), in the target's own shape.
-- Usage: wrk ... -s ping.lua URL -- <heartbeat|nchan> <user-prefix> <users>
-- done() prints one line "WRKJSON {...}" for the harness (wrk's text output is for people).

local threads = {}

function setup(thread)
   thread:set("offset", #threads)
   table.insert(threads, thread)
end

function init(args)
   style, prefix, users = args[1], args[2], tonumber(args[3])
   n = offset * 5003  -- each thread cycles through all users, from its own starting point
end

function request()
   local u = prefix .. (n % users)
   n = n + 1
   if style == "heartbeat" then
      return wrk.format("POST", "/ping", {
         ["X-User-Claim"] = '{"userid":"' .. u .. '","clientid":"c"}',
         ["Content-Type"] = "application/json",
      }, '{"status":"0"}')
   end
   return wrk.format("POST", "/ping/" .. u, {["Content-Type"] = "application/json"},
      '{"time":' .. os.time() .. ',"status":"0","userid":"' .. u .. '"}')
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_s":%.3f,"errors_connect":%d,"errors_read":%d,'
      .. '"errors_write":%d,"errors_timeout":%d,"non_2xx":%d,'
      .. '"p50_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f}\n',
      summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.timeout,
      e.status, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
      latency.max / 1e3))
end
