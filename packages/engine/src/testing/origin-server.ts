/**
 * A test origin, run inside a network namespace that a test or benchmark made (testing/origin-netns.ts): on every
 * address of the namespace (also ones added later) it serves HTTP on 80 and HTTPS on 443 (answering with the address
 * that served it, so a test can tell which origin a request reached; GET /bytes/N sends N bytes) and a TCP echo on
 * 5432; on each address given it receives UDP on 53 and 9999. Every connection and datagram is reported on stdout as
 * one JSON line.
 *
 * Usage: node origin-server.js <certFile> <keyFile> <address>...
 */
import { readFileSync } from "node:fs";
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { createServer as createTcpServer, type Socket } from "node:net";
import { createSocket } from "node:dgram";

const [certFile, keyFile, ...addresses] = process.argv.slice(2);
if (!certFile || !keyFile || addresses.length === 0) throw new Error("usage: origin-server.js <cert> <key> <address>...");
const tls = { cert: readFileSync(certFile), key: readFileSync(keyFile) };

const report = (event: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(event)}\n`);

function answer(kind: string) {
  return (request: IncomingMessage, response: ServerResponse) => {
    const local = request.socket.localAddress;
    report({ kind, local, host: request.headers.host ?? null, path: request.url });
    const size = /^\/bytes\/(\d+)$/.exec(request.url ?? "")?.[1];
    if (size !== undefined) {
      // A bulk download for throughput measurements.
      response.writeHead(200, { "content-type": "application/octet-stream", "content-length": size });
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      let left = Number(size);
      const pump = () => {
        while (left > 0) {
          const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
          left -= piece.length;
          if (!response.write(piece)) return void response.once("drain", pump);
        }
        response.end();
      };
      return pump();
    }
    response.end(`origin ${local} host ${request.headers.host ?? ""}\n`);
  };
}

const servers: Array<Promise<void>> = [];
const listen = (server: { listen(port: number, host: string, cb: () => void): unknown; once(e: "error", cb: (e: Error) => void): unknown }, port: number, host: string) =>
  servers.push(new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, resolve);
  }));

listen(createHttpServer(answer("http")), 80, "0.0.0.0");
listen(createHttpsServer(tls, answer("https")), 443, "0.0.0.0");
listen(
  createTcpServer((socket: Socket) => {
    report({ kind: "echo", local: socket.localAddress });
    socket.on("error", () => {});
    socket.pipe(socket);
  }),
  5432,
  "0.0.0.0",
);
for (const address of addresses) {
  for (const port of [53, 9999]) {
    const udp = createSocket("udp4");
    udp.on("message", (_message, from) => report({ kind: "udp", local: address, port, from: from.address }));
    servers.push(new Promise<void>((resolve, reject) => {
      udp.once("error", reject);
      udp.bind(port, address, () => resolve());
    }));
  }
}

await Promise.all(servers);
report({ kind: "ready" });
