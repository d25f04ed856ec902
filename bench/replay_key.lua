-- wrk script: POST /orders with one Idempotency-Key and body, so every request after the
-- first replays the stored response.
wrk.method = "POST"
wrk.body = '{"product_id":"p1","quantity":2}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Idempotency-Key"] = "bench-replay"
