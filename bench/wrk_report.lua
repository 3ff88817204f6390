-- wrk helper: cycle through a list of requests (set by the generated script as `r.requests`,
-- entries {method, path, headers, body}) and write a JSON report (latency percentiles in
-- microseconds from wrk's own histogram, counts, errors) to the file named by $WRK_REPORT.
local M = {}
M.requests = {}
local counter = 0
local prepared = {}
local position = 0

function M.setup(thread)
   counter = counter + 1
   thread:set("thread_no", counter)
end

function M.init(args)
   for i, r in ipairs(M.requests) do
      prepared[i] = wrk.format(r[1], r[2], r[3], r[4])
   end
   -- threads start at different places in the list
   position = ((thread_no or 1) - 1) * 7919 % #prepared
end

function M.request()
   position = position % #prepared + 1
   return prepared[position]
end

local function pct_list()
   local out = {}
   for p = 1, 99 do out[#out + 1] = p end
   out[#out + 1] = 99.5
   out[#out + 1] = 99.9
   out[#out + 1] = 99.99
   return out
end

function M.done(summary, latency, requests)
   local parts = {}
   for _, p in ipairs(pct_list()) do
      parts[#parts + 1] = string.format('"%s": %d', tostring(p), latency:percentile(p))
   end
   local e = summary.errors
   local json = string.format(
      '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"min": %d, "max": %d, "mean": %f, "stdev": %f, "percentiles": {%s}}}',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.max, latency.mean, latency.stdev, table.concat(parts, ", "))
   local f = assert(io.open(os.getenv("WRK_REPORT"), "w"))
   f:write(json)
   f:close()
end

return M
