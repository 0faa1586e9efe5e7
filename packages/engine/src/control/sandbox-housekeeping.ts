import type { SandboxEngine } from "../sandboxes/sandbox-engine.js";
import type { ControlStore } from "./control-store.js";
import type { SandboxService } from "./sandbox-service.js";

export interface SandboxHousekeepingOptions {
  /** How long an ended sandbox's records are kept (config.ts endedSandboxRetentionMs). */
  endedRetentionMs: number;
  /** How long after a tenant lost its last valid key its sandboxes are stopped (config.ts revokedTenantGraceMs). */
  revokedTenantGraceMs: number;
  /** Where it says what it did and what failed. */
  log: (line: string) => void;
}

/**
 * The control plane's clean-up, run on a timer by the server:
 * - a sandbox seen ended (stopped, killed, lost) gets `ended_at`; its owner row and network settings are pruned
 *   a retention period later (unless a snapshot of it is still owned: forks from it take the source's shape);
 * - snapshot owner rows whose snapshot is gone are dropped;
 * - a tenant whose keys are all revoked, for longer than the grace period, has its running sandboxes paused (killed
 *   where pausing fails): nobody can reach them any more, so they would only burn the host's CPU.
 * One sweep at a time; a failure is logged and the next sweep tries again.
 */
export class SandboxHousekeeping {
  #sweeping = false;

  constructor(
    private readonly engine: SandboxEngine,
    private readonly sandboxes: SandboxService,
    private readonly store: ControlStore,
    private readonly options: SandboxHousekeepingOptions,
  ) {}

  async sweep(now = Date.now()): Promise<void> {
    if (this.#sweeping) return;
    this.#sweeping = true;
    try {
      await this.#stopLockedOutTenants(now);
      await this.#markEnded(now);
      await this.#dropGoneSnapshots();
      const pruned = await this.store.pruneEndedSandboxes(now - this.options.endedRetentionMs);
      if (pruned.length > 0) this.options.log(`pruned the records of ${pruned.length} sandboxes ended over ${formatMs(this.options.endedRetentionMs)} ago`);
    } catch (error) {
      this.options.log(`housekeeping: ${error instanceof Error ? error.message : String(error)}`);
    } finally {
      this.#sweeping = false;
    }
  }

  async #markEnded(now: number): Promise<void> {
    for (const sandboxId of await this.store.sandboxesNotEnded()) {
      if (!this.sandboxes.isLive(sandboxId)) await this.store.markSandboxEnded(sandboxId, now);
    }
  }

  async #dropGoneSnapshots(): Promise<void> {
    for (const snapshotId of await this.store.ownedSnapshotIds()) {
      if (!this.engine.hasSnapshot(snapshotId)) await this.store.forgetSnapshot(snapshotId);
    }
  }

  async #stopLockedOutTenants(now: number): Promise<void> {
    for (const tenantId of await this.store.lockedOutTenantIds(now - this.options.revokedTenantGraceMs)) {
      for (const sandboxId of await this.store.tenantSandboxesNotEnded(tenantId)) {
        if (this.#engineState(sandboxId) !== "running") continue; // paused ones already cost only disk
        try {
          await this.engine.pause(sandboxId);
          this.options.log(`sandbox ${sandboxId} paused: its tenant's API keys are all revoked`);
        } catch (pauseError) {
          try {
            await this.engine.kill(sandboxId);
            this.options.log(`sandbox ${sandboxId} killed (pausing failed: ${String(pauseError)}): its tenant's API keys are all revoked`);
          } catch (killError) {
            this.options.log(`sandbox ${sandboxId} of a locked-out tenant could not be stopped: ${String(killError)}`);
          }
        }
      }
    }
  }

  #engineState(sandboxId: string): string | undefined {
    try {
      return this.engine.sandboxInfo(sandboxId).state;
    } catch {
      return undefined;
    }
  }
}

function formatMs(ms: number): string {
  if (ms % 86_400_000 === 0) return `${ms / 86_400_000} days`;
  if (ms % 60_000 === 0) return `${ms / 60_000} min`;
  return `${ms} ms`;
}
