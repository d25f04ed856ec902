-- wrk script: POST /orders with a fresh Idempotency-Key per request (thread id + counter),
-- so every request runs the handler and stores a record.
-- tid is a global on purpose: setup() sets it in each thread's Lua state with
-- thread:set, which a file-level local would shadow (every thread would then use 0).
local counter = 0
local next_tid = 0

function setup(thread)
    thread:set("tid", next_tid)
    next_tid = next_tid + 1
end

function init(args)
    tid = tid or 0
    prefix = (args[1] or "run") .. "-" .. tostring(tid) .. "-"
end

function request()
    counter = counter + 1
    return wrk.format("POST", "/orders", {
        ["Content-Type"] = "application/json",
        ["Idempotency-Key"] = prefix .. counter,
    }, '{"product_id":"p1","quantity":2}')
end
