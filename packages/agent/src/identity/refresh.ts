import { randomUUID } from "node:crypto";
import { open, readFile, rename, unlink, writeFile } from "node:fs/promises";
import type { ServerHttp2Stream } from "node:http2";
import { basename, dirname, join } from "node:path";
import type { IdentityResult } from "@codecourier/protocol";
import { RequestError, readJsonBody, sendJson } from "../http/respond.js";
import { logProblem } from "../log.js";
import { IdentityHelper } from "./helper.js";
import { validateIdentityRequest } from "./request.js";

export interface IdentityOptions {
  /** The guest-identity helper. Unset (e.g. an agent run outside a guest): the identity route fails with 500. */
  helperPath?: string;
  /** Default /proc/sys/kernel/hostname. */
  hostnamePath?: string;
  /** Default /etc/machine-id. */
  machineIdPath?: string;
  /** Default /etc/hosts: its 127.0.1.1 line (Debian's convention for the own hostname) gets the new hostname. */
  hostsPath?: string;
}

/** An identity request is a few hundred bytes of JSON. */
const maxRequestBytes = 4_096;
/** Errors that mean "this root filesystem has no writable /etc": the machine id is skipped, not a failure. */
const unwritableRootCodes = new Set(["EROFS", "ENOENT", "ENOTDIR"]);

/**
 * POST /v1/identity, for a guest restored from a memory snapshot: sets the clock, reseeds the kernel CRNG with
 * the host's entropy, sets the hostname and writes /etc/machine-id. Requests run one at a time.
 */
export class IdentityRefresher {
  readonly #helper: IdentityHelper | undefined;
  readonly #hostnamePath: string;
  readonly #machineIdPath: string;
  readonly #hostsPath: string;
  #previous: Promise<unknown> = Promise.resolve();
  #failure: unknown;
  /** The names the last successful refresh set (see #apply). */
  #applied: { hostname: string; machineId: string; machineIdWritten: boolean } | undefined;

  constructor(options: IdentityOptions = {}) {
    this.#helper = options.helperPath === undefined ? undefined : new IdentityHelper(options.helperPath);
    this.#hostnamePath = options.hostnamePath ?? "/proc/sys/kernel/hostname";
    this.#machineIdPath = options.machineIdPath ?? "/etc/machine-id";
    this.#hostsPath = options.hostsPath ?? "/etc/hosts";
  }

  /** Pid of the running helper process, if any. */
  get helperPid(): number | undefined {
    return this.#helper?.pid;
  }

  /**
   * Registers the refresh synchronously (before reading its body), so that {@link settled} covers it for every
   * request that arrives after it.
   */
  handle(stream: ServerHttp2Stream): Promise<void> {
    const run = this.#previous.then(async () => {
      const request = validateIdentityRequest(await readJsonBody(stream, maxRequestBytes));
      return this.#apply(request.epochMs, request.entropy, request.hostname, request.machineId);
    });
    this.#previous = run.then(
      () => (this.#failure = undefined),
      (error: unknown) => {
        // A malformed request changed nothing; a failure half-way leaves the guest with a stale identity.
        if (!(error instanceof RequestError && error.status === 400)) this.#failure = error;
      },
    );
    return run.then((result) => sendJson(stream, 200, result));
  }

  /**
   * Resolves once every refresh that has arrived so far is done. Rejects (503) while the last refresh failed: a
   * clone that may share its CRNG state with others must not run commands until a refresh succeeds.
   */
  async settled(): Promise<void> {
    await this.#previous;
    if (this.#failure !== undefined) {
      const reason = this.#failure instanceof Error ? this.#failure.message : String(this.#failure);
      throw new RequestError(503, "identity_refresh_failed", `the last identity refresh failed, so this guest may share state with other clones: ${reason}`);
    }
  }

  async #apply(epochMs: number, entropy: Buffer, hostname: string, machineId: string): Promise<IdentityResult> {
    if (this.#helper === undefined) throw new RequestError(500, "internal", "this agent has no identity helper");
    // The names are written only when they change: a pool clone gets them when it is produced, and its hand-out (or
    // a wake from idle sleep, or a resume) then pays only for the clock and the reseed, which must be fresh every
    // time. This also leaves alone a hostname the sandbox's own user chose since. This agent's memory travels with
    // every snapshot, so a fork (a new sandbox id) always differs from what it remembers.
    const applied = this.#applied;
    const namesChanged = applied?.hostname !== hostname || applied.machineId !== machineId;
    // All steps at once: a refresh sits between a clone's hand-out and its first command. If any step fails, the
    // refresh fails and every later request is refused (see settled()), so a half-applied identity is never used.
    const [, , machineIdWritten] = await Promise.all([
      this.#helper.apply(epochMs, entropy),
      namesChanged ? writeFile(this.#hostnamePath, hostname) : undefined,
      namesChanged ? this.#replaceEtcFile(this.#machineIdPath, async () => `${machineId}\n`, 0o444) : applied.machineIdWritten,
      namesChanged
        ? this.#replaceEtcFile(this.#hostsPath, async (current) => (current === undefined ? undefined : withOwnHostname(current, hostname)), 0o644)
        : undefined,
    ]);
    this.#applied = { hostname, machineId, machineIdWritten };
    return { clockSetTo: epochMs, reseeded: true, hostname, machineId, machineIdWritten };
  }

  /**
   * Replaces a file in /etc atomically (temp file, rename) with what `content` makes of its current text (undefined:
   * leave it alone). Returns false, and logs, if the root has no writable /etc: any root filesystem must work.
   */
  async #replaceEtcFile(path: string, content: (current: string | undefined) => Promise<string | undefined>, mode: number): Promise<boolean> {
    const tempPath = join(dirname(path), `.${basename(path)}.cc-${randomUUID()}`);
    try {
      const current = await readFile(path, "utf8").catch((error: NodeJS.ErrnoException) => {
        if (error.code === "ENOENT") return undefined;
        throw error;
      });
      const next = await content(current);
      if (next === undefined) return false;
      const handle = await open(tempPath, "wx", mode);
      try {
        // No fsync: the file lands in the page cache, which every later snapshot of this guest includes; a crash
        // of the VM itself ends the sandbox anyway.
        await handle.writeFile(next);
      } finally {
        await handle.close();
      }
      await rename(tempPath, path);
      return true;
    } catch (error) {
      await unlink(tempPath).catch(() => {});
      const code = (error as NodeJS.ErrnoException).code ?? "";
      if (!unwritableRootCodes.has(code)) {
        const message = error instanceof Error ? error.message : String(error);
        throw new RequestError(500, "internal", `writing ${path} failed: ${message}`);
      }
      logProblem(`identity: ${path} not written`, error);
      return false;
    }
  }
}

/** /etc/hosts with its 127.0.1.1 line naming `hostname` (added if there is none). */
export function withOwnHostname(hosts: string, hostname: string): string {
  const line = `127.0.1.1\t${hostname}`;
  const lines = hosts.split("\n");
  const index = lines.findIndex((l) => /^127\.0\.1\.1\s/.test(l));
  if (index >= 0) lines[index] = line;
  else lines.splice(lines.at(-1) === "" ? lines.length - 1 : lines.length, 0, line);
  return lines.join("\n");
}
