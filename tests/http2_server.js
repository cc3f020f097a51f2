// An HTTP/2 server over TLS for the remote tests (node's own http2 module, no package): serves
// one file as /slide with Range, ETag and Last-Modified as an object store answers them, and
// counts the requests for it by the HTTP version they came in (GET /counts, as JSON). Prints
// its port on the first line of standard output. HTTP/1.1 is allowed too, so that a client
// which does not offer HTTP/2 still reads, and the counts say which one it used.
'use strict';
const http2 = require('http2');
const fs = require('fs');

const [cert, key, file] = process.argv.slice(2);
const data = fs.readFileSync(file);
const etag = '"' + data.length.toString(16) + '-' + Math.floor(fs.statSync(file).mtimeMs) + '"';
const modified = new Date(fs.statSync(file).mtimeMs).toUTCString();
const counts = {};

const server = http2.createSecureServer(
  {cert: fs.readFileSync(cert), key: fs.readFileSync(key), allowHTTP1: true},
  (req, res) => {
    if (req.url === '/counts') {
      res.writeHead(200, {'content-type': 'application/json'});
      res.end(JSON.stringify(counts));
      return;
    }
    if (req.url !== '/slide') {
      res.writeHead(404, {'content-length': 0});
      res.end();
      return;
    }
    counts[req.httpVersion] = (counts[req.httpVersion] || 0) + 1;
    const headers = {'etag': etag, 'last-modified': modified, 'accept-ranges': 'bytes'};
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers['range'] || '');
    let status = 200;
    let body = data;
    if (range) {
      const first = Number(range[1]);
      const last = range[2] === '' ? data.length - 1 : Math.min(Number(range[2]), data.length - 1);
      if (first >= data.length || last < first) {
        res.writeHead(416, {'content-range': `bytes */${data.length}`, 'content-length': 0});
        res.end();
        return;
      }
      status = 206;
      body = data.subarray(first, last + 1);
      headers['content-range'] = `bytes ${first}-${last}/${data.length}`;
    }
    headers['content-length'] = body.length;
    res.writeHead(status, headers);
    res.end(req.method === 'HEAD' ? undefined : body);
  });
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
