-- wrk script for bench/api_server.py: POST ConfigMaps of ~1 KiB with unique names.
-- Names are RUN-THREAD-COUNTER (RUN from $BENCH_RUN, one per wrk invocation), so no create
-- conflicts and every answer must be 201; the path comes from $BENCH_PATH, a bearer token (if
-- any) from $BENCH_TOKEN, labels (if any) from $BENCH_LABELS (a JSON object: metadata.labels).
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

local counter = 0
local payload = string.rep("x", 1000)
local run = os.getenv("BENCH_RUN") or "run"
local path = os.getenv("BENCH_PATH")
local headers = {["Content-Type"] = "application/json"}
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then headers["Authorization"] = "Bearer " .. token end
local labels = os.getenv("BENCH_LABELS")
local meta = ""
if labels and labels ~= "" then meta = ',"labels":' .. labels end

function request()
  counter = counter + 1
  local body = '{"metadata":{"name":"' .. run .. '-' .. tid .. '-' .. counter .. '"' .. meta ..
    '},"data":{"p":"' .. payload .. '"}}'
  return wrk.format("POST", path, headers, body)
end
