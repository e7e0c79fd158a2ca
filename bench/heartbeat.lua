-- wrk script: heartbeats of the endpoints e0..e999 of services s0..s9 (e<i> is in s<i % 10>).
local ns = os.getenv("SDNS_BENCH_NS") or "beat"
wrk.method = "POST"
request = function()
  local i = math.random(0, 999)
  return wrk.format(nil, string.format("/v1/services/%s/s%d/endpoints/e%d/heartbeat", ns,
                                       i % 10, i))
end
