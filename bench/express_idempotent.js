// bench/gateway.py's comparison: the same Express backend as the gateway's tests, made
// idempotent by its own npm middleware (express-idempotency, Stripe-style, with its Redis
// adapter) instead of by cnerium-gateway. Usage: node express_idempotent.js REDIS_PORT
// (NODE_PATH has Debian's express and the npm packages bench/gateway.py installed).
// Prints "listening <port>".
'use strict';
const express = require('express');
const idempotency = require('express-idempotency');
const RedisAdapter = require('express-idempotency-redis-adapter').default;

const adapter = new RedisAdapter({
  connectionConfig: { url: 'redis://127.0.0.1:' + process.argv[2] },
});
let executed = 0;

adapter.connect().then(() => {
  const app = express();
  app.use(express.json());
  app.post('/api/orders', idempotency.idempotency({ dataAdapter: adapter }), (req, res) => {
    if (idempotency.getSharedIdempotencyService().isHit(req)) return;
    executed++;
    res.status(201).location('/orders/' + executed).json({ n: executed, body: req.body });
  });
  app.get('/count', (req, res) => res.json({ executed }));
  const server = app.listen(0, '127.0.0.1', () => {
    console.log('listening ' + server.address().port);
  });
}).catch((e) => { console.error(e); process.exit(1); });
