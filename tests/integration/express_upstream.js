// An Express upstream for test_gateway.py: counts what it executes, per method and path.
// Prints "listening <port>" once it listens on 127.0.0.1 (a free port).
'use strict';
const express = require('express');

const app = express();
const counts = {};
app.use(express.raw({ type: () => true, limit: '10mb' }));

function count(req) {
  const k = req.method + ' ' + req.path;
  counts[k] = (counts[k] || 0) + 1;
  return counts[k];
}

app.get('/count', (req, res) => res.json(counts));

app.post('/api/orders', (req, res) => {
  const n = count(req);
  res.status(201).location('/orders/' + n).set('X-Upstream', 'express')
    .json({ n, body: req.body.length ? req.body.toString('latin1') : '' });
});

app.post('/slow', (req, res) => {
  const n = count(req);
  setTimeout(() => res.status(201).json({ n }), Number(req.query.ms || 0));
});

// n bytes, written as the client takes them (bench/gateway.py's download).
app.get('/blob', (req, res) => {
  const n = Number(req.query.n || 0);
  const piece = Buffer.alloc(65536, 98);
  let sent = 0;
  res.set('Content-Length', String(n));
  function more() {
    while (sent < n) {
      const k = Math.min(piece.length, n - sent);
      sent += k;
      if (!res.write(k === piece.length ? piece : piece.subarray(0, k))) {
        res.once('drain', more);
        return;
      }
    }
    res.end();
  }
  more();
});

app.use((req, res) => {
  const n = count(req);
  res.set('X-Upstream', 'express').json({
    n, method: req.method, target: req.originalUrl,
    body: req.body && req.body.length ? req.body.toString('latin1') : '',
    forwarded_for: req.get('X-Forwarded-For') || null,
  });
});

const server = app.listen(0, '127.0.0.1', () => {
  console.log('listening ' + server.address().port);
});
