-- wrk script: one-call endpoint registrations, each to a new endpoint of 100 services.
local counter = 0
local ns = os.getenv("SDNS_BENCH_NS") or "rate"
wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"ip": "10.8.0.1"}'
request = function()
  counter = counter + 1
  local path = string.format("/v1/services/%s/s%d/endpoints/e%d-%d", ns, counter % 100,
                             counter, math.random(1, 1000000000))
  return wrk.format(nil, path)
end
