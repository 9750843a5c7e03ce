-- wrk script for bench/run.py: WRK_HX=1 sends `HX-Request: true` (the page's polls);
-- done() prints one machine-readable line that run.py parses.
if os.getenv("WRK_HX") == "1" then
  wrk.headers["HX-Request"] = "true"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d "
      .. "connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
