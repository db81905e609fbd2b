// A CouchDB-protocol server for the data source tests: express-pouchdb over in-memory PouchDB.
// `node server.mjs --port N` listens on 127.0.0.1:N (0: a free port) and prints `listening PORT`,
// then one JSON line per request ({"method", "url"}) on stdout: the request log the tests read.
// `POST /_test/drop` closes every open connection (a dropped changes feed); the data stays.
// `--seed FILE` creates the databases of a JSON object {database: [documents]} first (`make run`
// seeds the dashboard example's users and apps this way).
import { readFileSync } from "node:fs";
import express from "express";
import expressPouchDB from "express-pouchdb";
import PouchDB from "pouchdb-core";
import http from "pouchdb-adapter-http";
import memory from "pouchdb-adapter-memory";
import mapreduce from "pouchdb-mapreduce";
import replication from "pouchdb-replication";

const portAt = process.argv.indexOf("--port");
const port = portAt > 0 ? Number(process.argv[portAt + 1]) : 0;
const Pouch = PouchDB.plugin(memory).plugin(http).plugin(mapreduce).plugin(replication).defaults({ adapter: "memory" });

const sockets = new Set();
const app = express();
app.use((request, _response, next) => {
  console.log(JSON.stringify({ method: request.method, url: request.url }));
  next();
});
app.post("/_test/drop", (_request, response) => {
  response.json({ ok: true, dropped: sockets.size - 1 });
  for (const socket of sockets) {
    if (socket !== response.socket) socket.destroy();
  }
});
app.use("/", expressPouchDB(Pouch, { mode: "minimumForPouchDB", inMemoryConfig: true }));

const seedAt = process.argv.indexOf("--seed");
if (seedAt > 0) {
  const seed = JSON.parse(readFileSync(process.argv[seedAt + 1], "utf8"));
  for (const [name, documents] of Object.entries(seed)) {
    await new Pouch(name).bulkDocs(documents);
  }
}

const server = app.listen(port, "127.0.0.1", () => console.log(`listening ${server.address().port}`));
server.on("connection", (socket) => {
  sockets.add(socket);
  socket.on("close", () => sockets.delete(socket));
});
process.on("SIGTERM", () => process.exit(0));
