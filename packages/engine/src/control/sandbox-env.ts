import { EnvSchema } from "@codecourier/protocol/api";
import type { AgentClient } from "../agent-client/index.js";

/** Where a sandbox's env lives: in the guest's /run (a tmpfs), readable by root only. */
export const GUEST_ENV_FILE = "/run/codecourier/env.json";
/** An env file the guest grew past what a create can put there is not read (EnvSchema's bounds, with room for JSON). */
const MAX_ENV_FILE_BYTES = 10 * 1024 * 1024;

/**
 * The environment a sandbox was created with, which every command in it gets. The server does not store the
 * values: they go into the guest once, at create, and the server keeps them only in memory while it runs. After a
 * server restart they are read back from the guest (a pause, snapshot or fork carries the guest's /run along).
 * The file is the tenant's own: a guest that changes or removes it changes only its own commands' environment.
 */
export class SandboxEnv {
  readonly #cache = new Map<string, Record<string, string>>();

  /** Puts the env into a new sandbox's guest. */
  async give(sandboxId: string, agent: AgentClient, env: Record<string, string>): Promise<void> {
    if (Object.keys(env).length > 0) {
      await agent.mkdir("/run/codecourier");
      await agent.writeFile(GUEST_ENV_FILE, JSON.stringify(env), { mode: 0o600 });
    }
    this.#cache.set(sandboxId, env);
  }

  /** A fork has its source's env (its guest has the same file). */
  copy(sourceId: string, forkId: string): void {
    const env = this.#cache.get(sourceId);
    if (env) this.#cache.set(forkId, env);
  }

  /** The sandbox's env: from memory, else from its guest (an absent or malformed file is no env). */
  async of(sandboxId: string, agent: AgentClient): Promise<Record<string, string>> {
    const cached = this.#cache.get(sandboxId);
    if (cached) return cached;
    let env: Record<string, string> = {};
    try {
      const parsed = EnvSchema.safeParse(JSON.parse((await agent.readFileBuffer(GUEST_ENV_FILE, { maxBytes: MAX_ENV_FILE_BYTES })).toString("utf8")));
      if (parsed.success) env = parsed.data;
    } catch {
      // No file (created without env), or not JSON: no env.
    }
    this.#cache.set(sandboxId, env);
    return env;
  }

  forget(sandboxId: string): void {
    this.#cache.delete(sandboxId);
  }
}
