-- wrk script: optional method and body, and one machine-readable line of results at the end.
-- Usage: wrk ... -s bench/wrk_json.lua URL -- [METHOD [BODY_FILE]]
function init(args)
  if args[1] then wrk.method = args[1] end
  if args[2] then
    local f = assert(io.open(args[2], "rb"))
    wrk.body = f:read("*a")
    f:close()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "errors": %d, "status_errors": %d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
