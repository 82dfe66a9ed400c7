-- wrk script for benchmarks/serve_load.py: POST /predict with JSON bodies.
--
--   wrk -t1 -c8 -d10s -s serve_load.lua http://127.0.0.1:8000 -- bodies.jsonl
--
-- bodies.jsonl holds one request body per line; each connection cycles through
-- them. "-- GET /path" instead sends that one bodiless request (the framework's
-- floor: a constant-JSON route of the same app). done() prints one line "SERVE_LOAD_JSON {...}" with the request count,
-- the duration, every error counter and the latency percentiles (microseconds).
-- wrk counts a response with status > 399 in errors.status.

local requests = {}
local next_request = 0

function init(args)
  local path = args[1]
  if path == nil then
    error("pass the bodies file after --")
  end
  if path == "GET" then
    requests[1] = wrk.format("GET", args[2])
    return
  end
  for line in io.lines(path) do
    if #line > 0 then
      local headers = { ["Content-Type"] = "application/json" }
      requests[#requests + 1] = wrk.format("POST", "/predict", headers, line)
    end
  end
  if #requests == 0 then
    error("no request bodies in " .. path)
  end
end

function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end

function done(summary, latency, _)
  local errors = summary.errors
  io.write(string.format(
    'SERVE_LOAD_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, '
      .. '"timeout": %d}, "latency_us": {"min": %d, "mean": %.1f, "max": %d, '
      .. '"stdev": %.1f, "p50": %d, "p90": %d, "p95": %d, "p99": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90),
    latency:percentile(95), latency:percentile(99)
  ))
end
