import type { NetworkPolicy } from "@codecourier/protocol/network";
import type { SandboxEngine } from "../sandboxes/sandbox-engine.js";
import { ApiError } from "../server/api-error.js";
import type { ControlStore } from "./control-store.js";
import type { Shape } from "./sandbox-shapes.js";

/** A template name's versions and the network policy its sandboxes get unless they are created with their own. */
interface KnownTemplate {
  versions: number[];
  network: NetworkPolicy;
}

/** The shape every host makes at start and keeps (its pool is never stopped, its template never collected). */
export const DEFAULT_SHAPE: Shape = { cpus: 1, memoryMB: 512 };

export interface TemplateCatalogOptions {
  /**
   * Template shapes that may have a warm pool at once, host-wide (the default shape's included). A shape used when
   * all are taken stops the pool of the one used longest ago. Default 4.
   */
  maxPooledShapes?: number;
  /** A shape's pool is stopped after this long without a create of that shape. Default 10 min. */
  poolIdleMs?: number;
  /** A shape's template (other than the default's) is deleted after this long without a create. Default 24 h. */
  templateIdleMs?: number;
}

/**
 * Template names → saved template snapshots. A clone has its template's vCPUs and RAM, so each (name, version,
 * cpus, memoryMB) shape is its own template snapshot, made on first use (a cold boot: seconds under KVM, tens of
 * seconds under TCG). Shapes come in fixed steps (control/sandbox-shapes.ts), so a tenant cannot make the host boot
 * and keep one per megabyte; warm pools are kept only for shapes in recent use, at most `maxPooledShapes` of them,
 * and templates of shapes nobody has used for `templateIdleMs` are deleted. Creates of a shape being made wait
 * for it.
 *
 * Names known so far: `base`, the guest image's Debian root (version 1). The templates issue adds user templates.
 */
export class TemplateCatalog {
  readonly #making = new Map<string, Promise<string>>();
  /** Template snapshot → when a create last used it (this process's view; the store keeps it across restarts). */
  readonly #lastUsed = new Map<string, number>();
  readonly #options: Required<TemplateCatalogOptions>;

  /** A Map, not an object: a name such as "constructor" or "__proto__" must be just another unknown name. */
  static readonly KNOWN: ReadonlyMap<string, KnownTemplate> = new Map([["base", { versions: [1], network: { internet: false, allow: [], deny: [] } }]]);

  /** The default network policy of a template (name as resolved by resolveName). */
  static networkPolicy(name: string): NetworkPolicy {
    const known = TemplateCatalog.KNOWN.get(name);
    if (!known) throw new ApiError("not_found", `no template named ${JSON.stringify(name)}`);
    return known.network;
  }

  constructor(
    private readonly engine: SandboxEngine,
    private readonly store: ControlStore,
    options: TemplateCatalogOptions = {},
  ) {
    this.#options = { maxPooledShapes: options.maxPooledShapes ?? 4, poolIdleMs: options.poolIdleMs ?? 10 * 60_000, templateIdleMs: options.templateIdleMs ?? 24 * 3600_000 };
  }

  /** Parses "name" or "name@version" and checks that it exists; 404 naming it otherwise. */
  static resolveName(template: string): { name: string; version: number } {
    const [name = "", versionText] = template.split("@");
    const known = TemplateCatalog.KNOWN.get(name);
    if (known === undefined) {
      throw new ApiError("not_found", `no template named ${JSON.stringify(name)} (known: ${[...TemplateCatalog.KNOWN.keys()].join(", ")})`);
    }
    const version = versionText === undefined ? Math.max(...known.versions) : Number(versionText);
    if (!known.versions.includes(version)) {
      throw new ApiError("not_found", `template ${name} has no version ${versionText} (versions: ${known.versions.join(", ")})`);
    }
    return { name, version };
  }

  /** The template snapshot of this shape, made (and its pool started) if it does not exist yet. */
  async snapshotFor(name: string, version: number, cpus: number, memoryMB: number): Promise<string> {
    const key = `${name}@${version}/${cpus}/${memoryMB}`;
    const existing = await this.store.templateSnapshot(name, version, cpus, memoryMB);
    if (existing !== undefined && this.engine.canRestore(existing)) {
      await this.#used(existing);
      return existing;
    }
    // Saved with an older image or QEMU (after an upgrade): made again below. The old one goes if nothing uses it.
    if (existing !== undefined && this.engine.hasSnapshot(existing)) await this.engine.deleteSnapshot(existing).catch(() => {});
    let making = this.#making.get(key);
    if (making === undefined) {
      making = (async () => {
        const template = await this.engine.createTemplate({ cpus, memoryMiB: memoryMB });
        await this.store.recordTemplate(name, version, cpus, memoryMB, template.id);
        await this.#used(template.id);
        return template.id;
      })().finally(() => this.#making.delete(key));
      this.#making.set(key, making);
    }
    return making;
  }

  /**
   * Stops the pools of shapes not used for `poolIdleMs` and deletes the templates of shapes not used for
   * `templateIdleMs` (unless a sandbox still builds on one: then it waits for a later sweep). Returns the deleted
   * template snapshots.
   */
  async sweep(now = Date.now()): Promise<string[]> {
    const deleted: string[] = [];
    for (const row of await this.store.templateShapes()) {
      const id = row.snapshot_id;
      const lastUsed = Math.max(Number(row.last_used_at), this.#lastUsed.get(id) ?? 0);
      if (isDefaultShape(row)) continue;
      if (now - lastUsed > this.#options.poolIdleMs && this.engine.hasWarmPool(id)) await this.engine.stopWarmPool(id);
      if (now - lastUsed <= this.#options.templateIdleMs) continue;
      try {
        if (this.engine.hasSnapshot(id)) await this.engine.deleteSnapshot(id);
        await this.store.forgetTemplate(id);
        this.#lastUsed.delete(id);
        deleted.push(id);
      } catch {
        // A sandbox still runs from it: tried again at the next sweep.
      }
    }
    return deleted;
  }

  /** Records a use of this template and keeps its pool, within the host-wide budget of pooled shapes. */
  async #used(snapshotId: string): Promise<void> {
    const now = Date.now();
    this.#lastUsed.set(snapshotId, now);
    await this.store.markTemplateUsed(snapshotId, now);
    if (this.engine.hasWarmPool(snapshotId)) return;
    const pooled = [...this.#lastUsed.keys()].filter((id) => id !== snapshotId && this.engine.hasWarmPool(id));
    const defaultTemplate = await this.#defaultTemplate();
    const evictable = pooled.filter((id) => id !== defaultTemplate).sort((a, b) => this.#lastUsed.get(a)! - this.#lastUsed.get(b)!);
    while (pooled.length + 1 > this.#options.maxPooledShapes && evictable.length > 0) {
      const oldest = evictable.shift()!;
      pooled.splice(pooled.indexOf(oldest), 1);
      await this.engine.stopWarmPool(oldest);
    }
    // No room (a budget of one, taken by the default shape): this shape's creates restore cold.
    if (pooled.length + 1 <= this.#options.maxPooledShapes) this.engine.warmPool(snapshotId);
  }

  async #defaultTemplate(): Promise<string | undefined> {
    return this.store.templateSnapshot("base", 1, DEFAULT_SHAPE.cpus, DEFAULT_SHAPE.memoryMB);
  }
}

function isDefaultShape(row: { name: string; cpus: number; memory_mb: number }): boolean {
  return row.name === "base" && Number(row.cpus) === DEFAULT_SHAPE.cpus && Number(row.memory_mb) === DEFAULT_SHAPE.memoryMB;
}
