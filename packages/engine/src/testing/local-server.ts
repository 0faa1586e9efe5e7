import { spawn, type ChildProcess } from "node:child_process";
import { readFile, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ADMIN_KEY_FILE } from "../config.js";
import { CONTROL_DATABASE_FILE, ControlStore } from "../control/control-store.js";
import { isolatedDataDir } from "./isolated-data-dir.js";

const serverMain = join(dirname(fileURLToPath(import.meta.url)), "..", "server", "main.js");
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A server as `npm start` runs it, in a data dir of its own, for tests and benchmarks. */
export interface LocalServer {
  readonly url: string;
  /** Its data dir (CODECOURIER_HOME): `codecourier keys` and ControlStore work on it directly. */
  readonly home: string;
  /** Everything the server has written to stderr so far (progress, warnings, unexpected errors). */
  log(): string;
  /** The server process's pid (for its fds and memory in /proc). */
  pid(): number;
  /** The first start's admin key: its stderr is a pipe, not a terminal, so the server wrote it to a 0600 file. */
  adminKey(): Promise<string>;
  /** A new API key of this tenant (created if needed), written to the server's control database directly. */
  createKey(tenant: string): Promise<string>;
  /** SIGTERM (SIGKILL after 20 s), then the data dir is removed. */
  stop(): Promise<void>;
  /**
   * SIGKILL (nothing of the server's own clean-up runs; its VMs go on), then a new server on the same data dir and
   * port, resolved once it is ready.
   */
  restartAfterCrash(): Promise<void>;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

/**
 * Starts server/main.js on a free port with the images of the default data dir, and resolves once its default
 * template exists (a cold boot: up to a few minutes under TCG), so the first create comes from a warm pool.
 */
export async function startLocalServer(options: { prefix?: string; env?: Record<string, string> } = {}): Promise<LocalServer> {
  const home = await isolatedDataDir(options.prefix ?? "ccserver-");
  const port = await freePort();
  const env = { ...process.env, CODECOURIER_POOL_SIZE: "1", ...options.env, CODECOURIER_HOME: home, CODECOURIER_PORT: String(port) };
  let output = "";
  let server: ChildProcess;
  const start = async () => {
    server = spawn(process.execPath, [serverMain], { env, stdio: ["ignore", "ignore", "pipe"] });
    const started = output.length;
    server.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString()));
    // For debugging a failing test: CODECOURIER_TEST_SERVER_LOG=1 shows the server's log as it is written.
    if (process.env.CODECOURIER_TEST_SERVER_LOG) server.stderr!.pipe(process.stderr);
    const deadline = Date.now() + 300_000;
    while (!/template base .* ready/.test(output.slice(started))) {
      if (server.exitCode !== null || Date.now() > deadline) {
        await stop();
        throw new Error(`the server did not get ready:\n${output}`);
      }
      await sleep(100);
    }
  };
  const stopProcess = async (signal: NodeJS.Signals) => {
    if (server.exitCode === null && server.signalCode === null) {
      const exited = new Promise((resolve) => server.once("exit", resolve));
      server.kill(signal);
      await Promise.race([exited, sleep(20_000)]);
      server.kill("SIGKILL");
    }
  };
  const stop = async () => {
    await stopProcess("SIGTERM");
    await rm(home, { recursive: true, force: true });
  };
  const restartAfterCrash = async () => {
    await stopProcess("SIGKILL");
    await start();
  };
  await start();
  const createKey = async (tenant: string) => {
    const store = await ControlStore.openSqlite(join(home, CONTROL_DATABASE_FILE));
    try {
      return (await store.createKey(tenant)).apiKey;
    } finally {
      await store.close();
    }
  };
  const adminKey = async () => (await readFile(join(home, ADMIN_KEY_FILE), "utf8")).trim();
  return { url: `http://127.0.0.1:${port}`, home, log: () => output, pid: () => server.pid!, adminKey, createKey, stop, restartAfterCrash };
}

/** Runs `work`; a failure carries the server's log, where an API answer's "internal error" is explained. */
export async function withServerLog<T>(server: LocalServer, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    throw new Error(`${String(error)}\nserver log:\n${server.log()}`, { cause: error });
  }
}
